"""Chat templates (Jinja, as in HF `tokenizer_config.json`), rendered in Jinja's immutable sandbox with bounds.

A template comes with the model, so it is untrusted input: every problem (syntax, sandbox violation, undefined
value, the template's own `raise_exception`, a loop that runs too long or output that grows too large) is one
BadInputError (exit 2) naming the template problem. Jinja's sandbox stops attribute escapes; it bounds neither
time nor size, so a line tracer on the template's own frames enforces a deadline (Jinja has no hook for it) and
`*`/`**` are intercepted so `"a" * 10**9` never allocates.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime

from .errors import BadInputError

MAX_TEMPLATE_CHARS = 1 << 20          # a real chat template is a few KB
MAX_OUTPUT_CHARS = 1 << 22            # 4 Mi characters: far beyond any context window
MAX_SECONDS = 2.0                     # real templates render in well under a millisecond
TEMPLATE_FILE = "<template>"          # co_filename of the code Jinja compiles from a string


class TemplateLimitError(Exception):
    """Rendering ran past the time or size bound."""


def _raise_exception(message):
    """The HF-standard helper templates call to refuse a conversation (e.g. roles not alternating)."""
    from jinja2.exceptions import TemplateError
    raise TemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, indent=None):
    import json
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment(max_output: int):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and len(seq) * n > max_output:
                        raise TemplateLimitError(f"'{operator}' would build a value of {len(seq) * n} items "
                                                 f"(limit {max_output})")
            if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(right) > 1024:
                raise TemplateLimitError(f"exponent {right} is too large (limit 1024)")
            return super().call_binop(context, operator, left, right)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


class _Deadline:
    """sys.settrace on the template's frames only: every executed template line checks the clock."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def __call__(self, frame, event, arg):          # global tracer: pick the template's frames
        if frame.f_code.co_filename == TEMPLATE_FILE:
            return self._local
        return None

    def _local(self, frame, event, arg):
        if time.monotonic() > self.end:
            raise TemplateLimitError(f"rendering took longer than {self.seconds:g} s (a loop that does not end?)")
        return self._local


def check_message_chars(messages, max_output: int = MAX_OUTPUT_CHARS) -> None:
    """Messages whose content alone is past the rendered prompt's bound are refused, blaming them (not the
    template): the renderer checks this first, and a server before it hands the rendering to a worker thread."""
    content = sum(len(m.get("content") or "") if isinstance(m, dict) and isinstance(m.get("content") or "", str)
                  else 0 for m in messages)
    if content > max_output:
        raise BadInputError(f"the messages hold {content} characters, over the {max_output} a rendered chat prompt "
                            "may have; shorten them (a model's context holds far fewer tokens anyway)")


def render_chat_template(template: str, max_seconds: float = MAX_SECONDS, max_output: int = MAX_OUTPUT_CHARS,
                         **variables) -> str:
    """Render `template` with `variables` (messages, add_generation_prompt, bos_token, ...), bounded in time and
    output size; any failure -> BadInputError naming the problem."""
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError

    if not isinstance(template, str) or not template.strip():
        raise BadInputError("the chat template is empty; generate without --chat or fix tokenizer_config.json")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise BadInputError(f"the chat template is {len(template)} characters (limit {MAX_TEMPLATE_CHARS}); "
                            "it is not a chat template")
    check_message_chars(variables.get("messages") or (), max_output)
    env = _environment(max_output)
    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as e:
        raise BadInputError(f"chat template syntax error (line {e.lineno}): {e.message}; fix the model's "
                            "chat_template in tokenizer_config.json") from None
    except Exception as e:  # noqa: BLE001 - Jinja's compiler can raise others on pathological input
        raise BadInputError(f"chat template cannot be compiled ({type(e).__name__}: {e})") from None
    deadline = _Deadline(max_seconds)
    previous = sys.gettrace()
    parts, size = [], 0
    sys.settrace(deadline)
    try:
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            if size > max_output:
                raise TemplateLimitError(f"output passed {max_output} characters")
            if time.monotonic() > deadline.end:
                raise TemplateLimitError(f"rendering took longer than {max_seconds:g} s")
            parts.append(chunk)
    except TemplateLimitError as e:
        raise BadInputError(f"chat template stopped: {e}; the template is broken or hostile") from None
    except SecurityError as e:
        raise BadInputError(f"chat template refused by the sandbox: {e}") from None
    except UndefinedError as e:
        raise BadInputError(f"chat template uses an undefined value: {e.message}") from None
    except TemplateError as e:
        raise BadInputError(f"chat template raised an error: {e.message or e}") from None
    except RecursionError:
        raise BadInputError("chat template recursed too deeply (a macro calling itself?)") from None
    except Exception as e:  # noqa: BLE001 - a template can trip any Python error (1/0, 'a' + 1, ...)
        raise BadInputError(f"chat template failed ({type(e).__name__}: {e})") from None
    finally:
        sys.settrace(previous)
    return "".join(parts)
