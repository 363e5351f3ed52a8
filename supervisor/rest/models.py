"""Request and response bodies of the network-variable API, and its fixed limits.

The pydantic models are the OpenAPI document's schemas and the validation of
every body, so a name or value the wire cannot carry is refused (422) before
anything reaches a shard.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import HTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_NAMES_PER_TARGET",
    "MAX_NAME_BYTES",
    "MAX_NAME_CHARS",
    "MAX_VALUE_CHARS",
    "ClientMapping",
    "ClientVarReply",
    "ClientVarsDeleteReply",
    "ClientVarsReply",
    "ClientVarsUpsertReply",
    "ErrorDetail",
    "GlobalVarReply",
    "GlobalVarsReply",
    "GlobalVarsUpsertReply",
    "UpsertBody",
    "VarName",
    "VarState",
    "VarValue",
    "check_path_text",
    "error_responses",
]

# Fixed REST limits (BEHAVIOR §14: "REST fixed at 64 / 1024"), independent of
# the wire-side max_var_* settings.
MAX_NAME_CHARS = 64
# A name is a str8 on the wire; a longer one would break every later sync of
# the room (W11), so it is refused here rather than stored.
MAX_NAME_BYTES = 255
MAX_VALUE_CHARS = 1024
# More distinct names than this can never be stored for one room or device
# (BEHAVIOR §10.1; the shard refuses with the exact rule, HTTP 409).
MAX_NAMES_PER_TARGET = 100


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can carry lone surrogates ("\ud800"); they cannot go on the wire.
        raise ValueError("must be valid Unicode text (lone surrogates are not allowed)") from None
    return text


def _valid_name(name: str) -> str:
    _valid_text(name)
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"name is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} bytes are allowed "
            f"(the wire format stores names as str8)"
        )
    return name


VarName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_CHARS),
    AfterValidator(_valid_name),
]
VarValue = Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS), AfterValidator(_valid_text)]


def _document_upsert(schema: dict[str, Any]) -> None:
    # Documentation only: at run time an empty or missing ``variables`` is a
    # 400 (reference behaviour), not a 422, so pydantic must not enforce this.
    schema["required"] = ["variables"]


class UpsertBody(BaseModel):
    """``{"variables": {name: value}}``; unknown top-level keys are ignored."""

    model_config = ConfigDict(json_schema_extra=_document_upsert)

    variables: dict[VarName, VarValue] = Field(
        default_factory=dict,
        description=(
            f"names: 1-{MAX_NAME_CHARS} characters and at most {MAX_NAME_BYTES} UTF-8 bytes; "
            f"values: strings of at most {MAX_VALUE_CHARS} characters; at least one entry"
        ),
        json_schema_extra={"minProperties": 1, "maxProperties": MAX_NAMES_PER_TARGET},
    )


class VarState(BaseModel):
    state: Literal["applied", "queued", "failed"]


class ClientMapping(BaseModel):
    clientNo: int | None


class ClientVarsUpsertReply(BaseModel):
    roomId: str
    deviceId: str
    mapping: ClientMapping
    result: dict[str, VarState]


class ClientVarsReply(BaseModel):
    clientNo: int | None
    variables: dict[str, str]


class ClientVarReply(BaseModel):
    clientNo: int | None
    value: str


class ClientVarsDeleteReply(BaseModel):
    clientNo: int | None
    deletedCount: int


class GlobalVarsUpsertReply(BaseModel):
    roomId: str
    result: dict[str, VarState]


class GlobalVarsReply(BaseModel):
    variables: dict[str, str]


class GlobalVarReply(BaseModel):
    value: str


class ErrorDetail(BaseModel):
    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses with a ``{"detail"}`` body."""
    return {code: {"model": ErrorDetail} for code in codes}


def check_path_text(**values: str) -> None:
    """Path parameters must be text the wire can carry (no lone surrogates)."""
    for field, value in values.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(400, f"{field} must be valid UTF-8 text") from None
