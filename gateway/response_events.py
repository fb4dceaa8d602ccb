"""The events of a streamed response (OpenAI's Responses API), as OpenAI sends them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.openai import STATUS, logprobs_body
from gateway.response_tools import call_item
from gateway.responses import (
    Echo,
    message_item,
    response_body,
    spelling,
    status_of,
    text_part,
    used,
)
from schemas.errors import ErrorCode
from schemas.request import ChatBody
from schemas.result import TokenLogprob, Usage
from schemas.tools import text_before


@dataclass
class ResponseEvents:
    """The events of a streamed response, as OpenAI sends them, each numbered: the response
    created and in progress, its message and text part added, the text's deltas, then the
    text, part and message done and the response completed (or incomplete, when cut). An
    answer that may be function calls (`calls`) opens its message at its first text: under
    "auto" the text before any call, as it comes; its calls once it is whole."""

    echo: Echo
    created: int
    model: str
    body: ChatBody | None = None
    """The request's, when its answer may be function calls (read from the whole text)."""
    sequence: int = 0
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    started: bool = False
    """Whether the response's first events (created, in progress) were sent."""
    opened: bool = False
    """Whether the message's opening events were sent."""

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be function calls: its message opens at its first text."""
        return self.body is not None and self.body.calls_tools

    def starting(self) -> list[dict[str, Any]]:
        """The response created and in progress, the first events; none once sent (a stream
        opened before its first piece came sent them then)."""
        if self.started:
            return []
        self.started = True
        started = self._response("in_progress", [], None)
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
        ]

    def opening(self) -> list[dict[str, Any]]:
        """The events before the first delta (the message's first, unless it may be calls)."""
        return [*self.starting(), *([] if self.calls_tools else self._message_added())]

    def calls(
        self,
        text: str,
        sent: int,
        logprobs: list[TokenLogprob],
        finish_reason: str,
        usage: Usage | None,
    ) -> list[dict[str, Any]]:
        """The events after the `sent` characters of an answer that may be function calls,
        once its `text` is whole (`logprobs`: of the tokens after those sent): where it
        makes calls, the message of the text before them (if any, with the log-probabilities
        of the tokens that begin in it) done, then each call added, its arguments in one
        delta, and done, then the response done; the rest of the text and its closing
        where it makes none (chosen under "auto", or cut)."""
        made = None if self.body is None else self.body.calls_in(text)
        if not made:
            rest = text[sent:]
            deltas = self.delta(rest, logprobs) if rest else []
            return [*deltas, *self.closing(finish_reason, [] if rest else logprobs, usage)]
        status = status_of(finish_reason)
        events, output = [], []
        before = text_before(text) or ""
        if before or self.opened:
            rest = before[sent:]
            events += self.delta(rest, []) if rest else self._message_added()
            whole = self.logprobs + logprobs_body(logprobs)["content"]
            self.logprobs = spelling(whole, len(before))
            done, message = self._message_done(status, [])
            events += done
            output.append(message)
        for number, call in enumerate(made):
            index, item_id = len(output), self.echo.call_item_id(number)
            item = call_item(call, item_id, status)
            where = {"item_id": item_id, "output_index": index}
            events += [
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item=call_item(call, item_id, "in_progress", ""),
                ),
                self._event(
                    "response.function_call_arguments.delta", **where, delta=item["arguments"]
                ),
                self._event(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                ),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
            output.append(item)
        whole = self._response(status, output, used(usage))
        return [*events, self._event(f"response.{status}", response=whole)]

    def delta(self, text: str, logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
        """A piece of the text, with its tokens' log-probabilities when asked for (after
        the message's opening events, before its first)."""
        entries = logprobs_body(logprobs)["content"]
        opened = self._message_added()
        self.text += text
        self.logprobs += entries
        event = self._event(
            "response.output_text.delta", **self._where, delta=text, logprobs=entries
        )
        return [*opened, event]

    def closing(
        self, finish_reason: str, logprobs: list[TokenLogprob], usage: Usage | None
    ) -> list[dict[str, Any]]:
        """The events after the last delta (`logprobs`: tokens that brought no text)."""
        opened = self._message_added()
        status = status_of(finish_reason)
        done, message = self._message_done(status, logprobs)
        whole = self._response(status, [message], used(usage))
        return [*opened, *done, self._event(f"response.{status}", response=whole)]

    def _message_added(self) -> list[dict[str, Any]]:
        """The events that open the answer's message and its text part; none once sent."""
        if self.opened:
            return []
        self.opened = True
        return [
            self._event(
                "response.output_item.added",
                output_index=0,
                item=message_item(self.echo, "in_progress", []),
            ),
            self._event("response.content_part.added", **self._where, part=text_part("", [])),
        ]

    def _message_done(
        self, status: str, logprobs: list[TokenLogprob]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The events that close the message (`logprobs`: tokens not yet sent), and it."""
        self.logprobs += logprobs_body(logprobs)["content"]
        part = text_part(self.text, self.logprobs)
        message = message_item(self.echo, status, [part])
        events = [
            self._event(
                "response.output_text.done", **self._where, text=self.text, logprobs=self.logprobs
            ),
            self._event("response.content_part.done", **self._where, part=part),
            self._event("response.output_item.done", output_index=0, item=message),
        ]
        return events, message

    def failed(self, code: ErrorCode, message: str) -> list[dict[str, Any]]:
        """The events of an answer that failed after its first piece, as OpenAI ends such a
        stream: an `error` event with llmq's code, then the response failed, with what its
        message had shown, OpenAI's code for it (a 429's, else a server error's), and
        `store` false (a failed response is not kept)."""
        kind = "rate_limit_exceeded" if STATUS.get(code) == 429 else "server_error"
        shown = text_part(self.text, self.logprobs)
        written = [message_item(self.echo, "incomplete", [shown])] if self.opened else []
        error = {"code": kind, "message": message}
        failed = {**self._response("failed", written, None, error), "store": False}
        return [
            self._event("error", code=code.value, message=message, param=None),
            self._event("response.failed", response=failed),
        ]

    def _response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return response_body(
            self.echo,
            created=self.created,
            model=self.model,
            status=status,
            output=output,
            usage=usage,
            error=error,
        )

    @property
    def _where(self) -> dict[str, Any]:
        return {"item_id": self.echo.item_id, "output_index": 0, "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return body
