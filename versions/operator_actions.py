"""What an operator does to a model by hand: promote, pin, unpin, rollback, champion, annotate.

`streamrec models ...` and the dashboard's buttons both call :func:`apply_action`, so a move
means the same thing, is checked the same way and lands on the timeline the same way, with who
made it (``by``) and why (``reason``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from streamrec.stream.errors import ConfigError, StreamrecError
from streamrec.versions.store import VersionStore, champion, set_champion

ACTIONS = ("promote", "pin", "unpin", "rollback", "champion", "annotate")
MAX_TAGS = 20
MAX_TAG_CHARS = 64
MAX_DESCRIPTION_CHARS = 1000
TAG = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_TAG_CHARS}}}")


@dataclass(frozen=True)
class ActionResult:
    """Where a model's pointers stand after an action, and one line saying so."""

    model: str
    action: str
    live: int | None
    pinned: bool
    champion: str | None
    message: str


def check_annotation(description: str | None, tags: Sequence[str]) -> None:
    """Refuse an annotation that would not display well, naming the option at fault."""
    if description is None and not tags:
        raise ConfigError("--description or --tag: give at least one")
    if description is not None and (len(description) > MAX_DESCRIPTION_CHARS or not description.isprintable()):
        raise ConfigError(f"--description: at most {MAX_DESCRIPTION_CHARS} printable characters")
    if len(tags) > MAX_TAGS:
        raise ConfigError(f"--tag: at most {MAX_TAGS} tags (got {len(tags)})")
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise ConfigError(f"--tag {tag!r}: 1-{MAX_TAG_CHARS} letters, digits, '.', '_', '-' or ':'")


def apply_action(store: VersionStore, action: str, version: int | None = None, *, by: str,
                 reason: str | None = None, description: str | None = None,
                 tags: Sequence[str] = ()) -> ActionResult:
    """Do ``action`` on ``store``'s model and log it with ``by`` and ``reason``.

    ``version`` is needed by promote and annotate; pin defaults to the live version, rollback to
    the newest kept version before live that the quality gate promoted. A missing version, an
    unknown action or a model with no versions raises :class:`StreamrecError`."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    model = store.model
    if action == "champion":  # may name a model whose trainer has not published yet
        set_champion(store.client, store.namespace, model, by=by, reason=reason)
        return _result(store, action, f"champion of {store.namespace}: {model}")
    if store.head() is None:
        raise StreamrecError(f"model {model!r} has no versions in namespace {store.namespace!r}")
    if action == "annotate":
        if version is None:
            raise ConfigError("annotate: which version?")
        check_annotation(description, tags)
        note = store.annotate(version, description, tags, by=by)
        text = note["description"] or "(no description)"
        return _result(store, action, f"{model} v{version}: {text}" + "".join(f" #{t}" for t in note["tags"]))
    if action == "promote":
        if version is None:
            raise ConfigError("promote: which version?")
        store.set_live(version, pin=store.pinned(), reason=reason, by=by)
        pinned = " (pinned)" if store.pinned() else ""
        return _result(store, action, f"{model}: live v{version}{pinned}")
    if action == "pin":
        version = store.live() if version is None else version
        if version is None:
            raise StreamrecError(f"{model}: no live version to pin")
        store.set_live(version, pin=True, kind="pin", reason=reason, by=by)
        return _result(store, action, f"{model}: live v{version}, pinned")
    if action == "rollback":
        if version is None:
            live = store.live()
            version = None if live is None else store.previous_promoted(live)
            if version is None:
                raise StreamrecError(f"{model}: no promoted version older than live v{live} "
                                     f"(kept: {store.versions()})")
        store.set_live(version, pin=True, kind="rollback", reason=reason, by=by)
        return _result(store, action, f"{model}: rolled back to v{version}, pinned "
                                      "(`streamrec models unpin` resumes promotion)")
    live = store.unpin(by=by, reason=reason)
    return _result(store, action, f"{model}: unpinned; live v{live}, and the trainer's next promoted "
                                  "version goes live")


def _result(store: VersionStore, action: str, message: str) -> ActionResult:
    live, _head, pinned = store.pointers()
    return ActionResult(store.model, action, live, pinned, champion(store.client, store.namespace), message)
