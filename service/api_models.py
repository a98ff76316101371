"""Request and response bodies of the HTTP API (what /docs shows)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from backends.config import Pricing
from service.grounding import GroundingKind, check_rules

if TYPE_CHECKING:
    from service.pipeline.spend import Spend


class ExtractOptions(BaseModel):
    """Per-request limits; each can only tighten what the backend's config allows."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)  # "10" is no number

    max_attempts: int | None = Field(None, ge=1, le=10, description="Cap on answers (first + re-asks).")
    max_cost_usd: float | None = Field(None, gt=0, description="Stop before an attempt that could pass this.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, ge=1, le=32768)
    timeout_s: float | None = Field(None, gt=0, le=600, description="Overall deadline (capped by config).")


class ExtractRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"task": "invoice", "text": "Invoice from ACME GmbH, 2024-03-01. Total due: EUR 1,234.50"},
                {
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                    "instructions": "The city the customer lives in.",
                    "text": "I moved to Lisbon last spring.",
                },
            ]
        },
    )

    task: str | None = Field(None, description="A configured task name; or give `schema` instead.")
    # a boolean schema is valid JSON Schema but can describe no extraction: let it reach the schema checks, so
    # it is 400 `invalid_schema` saying so rather than a generic "not a dictionary"
    json_schema: dict[str, Any] | StrictBool | None = Field(
        None, alias="schema", description="Ad-hoc JSON Schema (an object)."
    )
    instructions: str | None = Field(None, description="Extra instructions for an ad-hoc schema.")
    grounding: dict[str, GroundingKind] | None = Field(
        None,
        description="For an ad-hoc schema: fields whose value the text must print, {path: date|number} (e.g. "
        '{"invoice_date": "date", "items[].amount": "number"}); a value the text does not print is '
        "snapped to the nearest one it does. A task brings its own.",
    )
    text: str = Field(min_length=1, description="The text to extract from.")
    backend: str | None = Field(None, description="Override the routed backend (or X-Extraction-Backend).")
    options: ExtractOptions = Field(default_factory=ExtractOptions)

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        return check_sendable(data)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must not be blank")
        return text

    @model_validator(mode="after")
    def _task_or_schema(self) -> ExtractRequest:
        if (self.task is None) == (self.json_schema is None):
            raise ValueError("give exactly one of `task` or `schema`")
        if self.instructions is not None and self.task is not None:
            raise ValueError("`instructions` goes with an ad-hoc `schema`; a task brings its own")
        if self.grounding is not None:
            if self.task is not None:
                raise ValueError("`grounding` goes with an ad-hoc `schema`; a task brings its own")
            check_rules(self.grounding)
        return self


def check_sendable(data: Any) -> Any:
    """`data` unchanged if it can be written as JSON for a backend (and into our answers); else a ValueError
    that says why. Python's parser accepts what orjson cannot write: lone surrogates (`"\\ud800"`), integers
    beyond 64 bits, nesting deeper than 254 levels; passed on, each would fail the call with a 500."""
    try:
        orjson.dumps(data)
    except orjson.JSONEncodeError as e:
        reason = str(e)
        if "surrogates" in reason:
            raise ValueError("a string holds a lone surrogate (such as \\ud800): it is not valid Unicode") from None
        if "64-bit" in reason:
            raise ValueError("an integer is outside the 64-bit range") from None
        if "Recursion" in reason:
            raise ValueError("the request is nested more than 254 levels of arrays and objects deep") from None
    return data  # anything else orjson refuses is not JSON: the fields' own validation says what is wrong


class GroundingChange(BaseModel):
    path: str = Field(description="Where in `data`, e.g. `date` or `items[2].amount`.")
    model_value: Any = Field(description="What the model answered (the text does not print it).")
    value: Any = Field(description="What `data` holds instead: the nearest value the text prints.")


class TokenUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class ExtractResponse(BaseModel):
    data: Any = Field(description="The extracted JSON; always valid against the task's schema.")
    task: str
    backend: str = Field(description="The backend that answered.")
    model: str
    attempts: int = Field(description="Answers the model gave (1 + re-asks).")
    retries: int = Field(0, description="Transport retries (429/5xx/timeouts) on top of the attempts.")
    usage: TokenUsage = Field(description="Tokens over all attempts.")
    cost_usd: float = Field(description="USD over all attempts, from the backend's pricing.")
    latency_ms: float
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        description="How the output was constrained upstream (json_object: the schema is enforced by "
        "validation and re-ask only)."
    )
    grounding: list[GroundingChange] = Field(
        default_factory=list,
        description="Grounded values the model did not copy from the text, replaced by the nearest printed one "
        "(the task's `grounding` rules).",
    )
    request_id: str | None = None
    _spend: Spend | None = PrivateAttr(default=None)

    @property
    def spend(self) -> Spend:
        """What the request consumed, typed (the fields above are its figures for the wire)."""
        from service.pipeline.spend import Spend

        return self._spend if self._spend is not None else Spend()

    def with_spend(self, spend: Spend) -> ExtractResponse:
        self._spend = spend
        return self


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorInfo
    request_id: str | None = None


def problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic's validation errors as the API lists them in `details.errors`."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "message": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors]  # fmt: skip


@dataclass(frozen=True)
class InvalidItem:
    """A batch item that is no valid request: it gets its own 400 in the results while the others run."""

    errors: list[dict[str, Any]]


def _item_or_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as e:
        return InvalidItem(problems(e.errors()))


# At run time an item is an ExtractRequest or an InvalidItem (the route answers those); /docs shows the request.
BatchItem = Annotated[ExtractRequest, WrapValidator(_item_or_invalid)]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(min_length=1, description="Independent extractions.")
    backend: str | None = Field(None, description="Default backend for items that name none.")

    @model_validator(mode="before")
    @classmethod
    def _sendable(cls, data: Any) -> Any:
        if isinstance(data, dict):  # the items check themselves
            check_sendable({k: v for k, v in data.items() if k != "items"})
        return data


class BatchItemResult(BaseModel):
    index: int
    ok: bool
    result: ExtractResponse | None = None
    error: ErrorInfo | None = None
    status: int = Field(description="The HTTP status this item would have had alone.")


class BatchResponse(BaseModel):
    results: list[BatchItemResult]
    succeeded: int
    failed: int
    usage: TokenUsage
    cost_usd: float
    request_id: str | None = None


class TaskSummary(BaseModel):
    name: str
    description: str
    backend: str = Field(description="The backend this task routes to now.")


class TaskDetail(TaskSummary):
    json_schema: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    instructions: str
    examples: list[dict[str, Any]]
    eval_ignore: list[str] = Field(default_factory=list, description="Free-text fields evaluation does not score.")
    grounding: dict[str, str] = Field(
        default_factory=dict, description="Fields whose value the text must print: {path: date|number}."
    )

    model_config = ConfigDict(populate_by_name=True)


class BackendInfo(BaseModel):
    name: str
    kind: str
    model: str
    base_url: str | None = Field(
        None, description="Shown only with API keys off and auth.show_base_urls (null: hidden, or the kind's default)."
    )
    prompt_style: str
    structured_output: str
    pricing: Pricing
    max_attempts: int
    max_concurrency: int
    timeout_s: float
    default: bool
    configured: bool = Field(description="False when its API key variable is unset.")
