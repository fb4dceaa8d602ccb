"""The events of a streamed response (OpenAI's Responses API), as OpenAI sends them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.openai import logprobs_body
from gateway.response_tools import call_item
from gateway.responses import Echo, message_item, response_body, status_of, text_part, used
from schemas.request import ChatBody
from schemas.result import TokenLogprob, Usage


@dataclass
class ResponseEvents:
    """The events of a streamed response, as OpenAI sends them, each numbered: the response
    created and in progress, its message and text part added, the text's deltas, then the
    text, part and message done and the response completed (or incomplete, when cut). An
    answer that may be function calls is read whole first (`calls`)."""

    echo: Echo
    created: int
    model: str
    body: ChatBody | None = None
    """The request's, when its answer may be function calls (read from the whole text)."""
    sequence: int = 0
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be function calls: its events come once it is whole."""
        return self.body is not None and self.body.calls_tools

    def opening(self) -> list[dict[str, Any]]:
        """The events before the first delta (before the whole answer, for calls)."""
        started = self._response("in_progress", [], None)
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
            *([] if self.calls_tools else self._message_added()),
        ]

    def calls(
        self,
        text: str,
        logprobs: list[TokenLogprob],
        finish_reason: str,
        usage: Usage | None,
    ) -> list[dict[str, Any]]:
        """The events after the opening of an answer that may be function calls, once its
        `text` (and its tokens' `logprobs`) is whole: each call added, its arguments in one
        delta, and done, then the response done; the message of the text, with the
        log-probabilities, where it makes no calls (chosen under "auto", or cut)."""
        made = None if self.body is None else self.body.calls_in(text)
        if not made:  # each event numbered as it comes
            added = self._message_added()
            deltas = [self.delta(text, logprobs)] if text else []
            return [*added, *deltas, *self.closing(finish_reason, [] if text else logprobs, usage)]
        status = status_of(finish_reason)
        events, items = [], []
        for index, call in enumerate(made):
            item = call_item(call, status)
            where = {"item_id": item["id"], "output_index": index}
            events += [
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item=call_item(call, "in_progress", ""),
                ),
                self._event(
                    "response.function_call_arguments.delta", **where, delta=item["arguments"]
                ),
                self._event(
                    "response.function_call_arguments.done", **where, arguments=item["arguments"]
                ),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
            items.append(item)
        whole = self._response(status, items, used(usage))
        return [*events, self._event(f"response.{status}", response=whole)]

    def delta(self, text: str, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        """A piece of the text, with its tokens' log-probabilities when asked for."""
        entries = logprobs_body(logprobs)["content"]
        self.text += text
        self.logprobs += entries
        return self._event(
            "response.output_text.delta", **self._where, delta=text, logprobs=entries
        )

    def closing(
        self, finish_reason: str, logprobs: list[TokenLogprob], usage: Usage | None
    ) -> list[dict[str, Any]]:
        """The events after the last delta (`logprobs`: tokens that brought no text)."""
        self.logprobs += logprobs_body(logprobs)["content"]
        status = status_of(finish_reason)
        part = text_part(self.text, self.logprobs)
        message = message_item(self.echo, status, [part])
        whole = self._response(status, [message], used(usage))
        return [
            self._event(
                "response.output_text.done", **self._where, text=self.text, logprobs=self.logprobs
            ),
            self._event("response.content_part.done", **self._where, part=part),
            self._event("response.output_item.done", output_index=0, item=message),
            self._event(f"response.{status}", response=whole),
        ]

    def _message_added(self) -> list[dict[str, Any]]:
        """The events that open the answer's message and its text part."""
        return [
            self._event(
                "response.output_item.added",
                output_index=0,
                item=message_item(self.echo, "in_progress", []),
            ),
            self._event("response.content_part.added", **self._where, part=text_part("", [])),
        ]

    def _response(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return response_body(
            self.echo,
            created=self.created,
            model=self.model,
            status=status,
            output=output,
            usage=usage,
        )

    @property
    def _where(self) -> dict[str, Any]:
        return {"item_id": self.echo.item_id, "output_index": 0, "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return body
