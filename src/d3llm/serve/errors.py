"""Errors of one request that name the request field to change (OpenAI's error `param`)."""

from __future__ import annotations

from d3llm.errors import D3llmError


class BadRequest(D3llmError):
    """A setting or prompt the server cannot decode (HTTP `status`, 400 unless said; 404 for
    another model's name); `param` names the field (`"seed"`, `"messages[1].role"`), or is
    None when no one field is at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status
