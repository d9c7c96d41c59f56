"""Request bodies of the OpenAI-compatible routes (pydantic; FastAPI validates them, our handler turns a failure
into 400 naming the field). Fields the OpenAI API defines but this server does not act on are accepted and
ignored (clients send them by default: user, metadata, store, ...); fields that would change the answer and are not
supported are refused (400 naming the field) unless they carry their neutral value (a penalty of 0, an empty
logit_bias, no tools, response_format text, ...).

Validation is strict: a JSON boolean is not a number, a string is not a number or a boolean (pydantic's lax mode
would read "max_tokens": "8" as 8, true as 1 and "stream": "yes" as true); an integer is a number. A null is
the field's default, as in the OpenAI API (whose fields are nullable: some clients send "temperature": null)."""
from __future__ import annotations

import secrets
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from paddle2ort.runtime.generation import PENALTY_RANGE, SAMPLING_EPS, GenerationConfig

MAX_STOP_STRINGS = 4           # as the OpenAI API
DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions' default max_tokens in the OpenAI API
# fields a null stands for the default of (the OpenAI API's fields are nullable)
NULL_IS_DEFAULT = ("temperature", "top_p", "top_k", "repetition_penalty", "ignore_eos", "n", "stream")

_PENALTY = ("only 0 (off); repetition_penalty is supported instead (CTRL-style: it lowers the logits of tokens "
            "already in the prompt or the answer; 1.0 = off, > 1 discourages repeats)")
UNSUPPORTED = {   # field -> what this server accepts of it, and what it offers instead
    "frequency_penalty": _PENALTY,
    "presence_penalty": _PENALTY,
    "logit_bias": "only an empty map (no per-token bias)",
    "best_of": "only null, 1 or equal to n (each of the n choices is returned; none is ranked)",
    "response_format": 'only {"type": "text"} (no JSON mode or JSON schema)',
    "tools": "only an empty list (no tool calls)",
    "tool_choice": 'only "none" or "auto" without tools (no tool calls)',
    "functions": "only an empty list (no function calls)",
    "function_call": 'only "none" or "auto" without functions (no function calls)',
    "top_logprobs": "only 0 (logprobs are not supported)",
}


def unsupported(name: str) -> str:
    return f"{name} is not supported by this server: {UNSUPPORTED[name]}"


def check_text(v: str, what: str) -> str:
    """Text the tokenizer can take: valid Unicode (JSON's "\\ud800" is a lone surrogate, which no UTF-8 tokenizer
    encodes)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds an unpaired UTF-16 surrogate ({v[e.start]!r} at character {e.start}), which "
                         "is not text; send valid Unicode") from None
    return v


class ModelRequest(BaseModel):
    """What every route's body shares: the served model's name."""
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)


class GenerationRequest(ModelRequest):
    """The fields /v1/completions and /v1/chat/completions share (sampling, stops, n, streaming), and how they
    become a GenerationConfig; each route adds its input (prompt or messages) and its max_tokens default."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)                       # extension (vLLM's name); 0 = off
    repetition_penalty: float = Field(default=1.0, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1],
                                      allow_inf_nan=False)   # extension
    ignore_eos: bool = False                                  # extension (vLLM's name): run to max_tokens
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = Field(default=None, validate_default=True)
    seed: int | None = Field(default=None, ge=0, lt=2 ** 64)
    stream: bool = False
    stream_options: dict | None = None
    logprobs: Union[bool, int, None] = None
    top_logprobs: int | None = None
    # OpenAI fields that would change the answer: refused unless neutral (_unsupported)
    frequency_penalty: float | None = Field(default=None, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, allow_inf_nan=False)
    logit_bias: dict[str, Any] | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    functions: list[Any] | None = None
    function_call: Union[str, dict[str, Any], None] = None

    @field_validator(*NULL_IS_DEFAULT, mode="before")
    @classmethod
    def _null_is_default(cls, v, info: ValidationInfo):
        return cls.model_fields[info.field_name].default if v is None else v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return tuple(stops)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v):
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    @field_validator("top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias", "tools", "functions")
    @classmethod
    def _neutral_only(cls, v, info: ValidationInfo):
        if v:                                   # None, 0, {} and [] change nothing
            raise ValueError(unsupported(info.field_name))
        return v

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_calls(cls, v, info: ValidationInfo):
        if v not in (None, "none", "auto"):     # with no tools, "auto" calls none
            raise ValueError(unsupported(info.field_name))
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v and v.get("type") != "text":
            raise ValueError(unsupported("response_format"))
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of_n(cls, v, info: ValidationInfo):
        if v is not None and v not in (1, info.data.get("n", 1)):
            raise ValueError(unsupported("best_of"))
        return v

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def new_tokens(self, default: int) -> int:
        return self.max_tokens or default

    def generation_config(self, max_tokens: int) -> GenerationConfig:
        """The request's decoding settings (raises BadInputError on a combination GenerationConfig refuses); a
        sampling request without a seed gets a fresh one, so its choices still draw independently."""
        sampling = self.temperature >= SAMPLING_EPS and self.top_k != 1
        seed = self.seed if self.seed is not None or not sampling else secrets.randbits(63)
        return GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens if self.ignore_eos else 0,
                                do_sample=sampling, temperature=self.temperature if sampling else 1.0,
                                top_k=self.top_k, top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                                stop_strings=tuple(self.stop), seed=seed)


class CompletionRequest(GenerationRequest):
    prompt: Union[str, list[str]]
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _not_token_ids(cls, v):
        if isinstance(v, list) and any(isinstance(x, (int, list)) and not isinstance(x, bool) for x in v):
            raise ValueError("a prompt of token ids is not supported by this server: send the prompt as text (a "
                             "string)")
        return v

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("give one prompt per request (a list of exactly one string)")
            v = v[0]
        if not v.strip():
            raise ValueError("the prompt is empty")
        return check_text(v, "the prompt")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported by this server")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported by this server")
        return v


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v, info: ValidationInfo):
        """What a message's content may be, said plainly (not pydantic's union errors): null only for an assistant
        (the OpenAI API's tool-call turns; here: empty), a list only of text parts."""
        if v is None:
            if info.data.get("role") == "assistant":
                return ""
            raise ValueError("content is null: give the message's text (a string, or a list of text parts)")
        if isinstance(v, list):
            kinds = [p.get("type") if isinstance(p, dict) else type(p).__name__ for p in v]
            other = sorted({str(k) for k in kinds if k != "text"})
            if other:
                raise ValueError(f"content parts of type {', '.join(other)} are not supported by this server: send "
                                 "text (a string, or parts {\"type\": \"text\", \"text\": ...})")
        return v

    @field_validator("content")
    @classmethod
    def _valid_text(cls, v):
        check_text(v if isinstance(v, str) else "".join(p.text for p in v), "content")
        return v

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or super().new_tokens(default)


class ClassifyRequest(ModelRequest):
    model_config = ConfigDict(extra="forbid")

    input: Union[str, list[str]]

    @field_validator("input")
    @classmethod
    def _texts(cls, v):
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("give at least one text")
        return texts
