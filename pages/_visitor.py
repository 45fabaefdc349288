"""Who is visiting, resolved once per session: local mode's one visitor, or a shared server's visitor.

On a shared server (``TOPTUNE_SHARED=1``) a visitor is known by their login
where the operator configured ``st.login`` (an ``[auth]`` section in the
secrets), else by an unguessable token kept in the page's URL (``?v=...``): a
reload or a bookmark finds the same workspace, and sending the link shares it.
An optional access password (``toptune_password`` in the secrets) is asked
before a new workspace is made. Every later script run of the session keeps
the token in the URL (navigating between pages drops it), notes the visit
(the idle clock of the workspace) and, now and then, removes idle workspaces.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Optional

import streamlit as st

from toptune_core.config import Settings
from toptune_core.jobs.queue import finetune_queue
from toptune_core.jobs.thread import registry
from toptune_core.shared.visitors import Visitor, Visitors

TOKEN_PARAM = "v"
PASSWORD_SECRET = "toptune_password"
TOUCH_EVERY_S = 60
SWEEP_EVERY_S = 300
EXPIRED = "The workspace in this link has expired or does not exist, so this is a new, empty one."

_sweep_lock = threading.Lock()
_last_sweep = [0.0]


def _secret(name: str) -> Optional[str]:
    try:
        value = st.secrets.get(name)
    except Exception:  # no secrets file at all
        return None
    return str(value) if value else None


def _login_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:
        return False


def _password_gate(password: str) -> None:
    """Stop the page until this session has given the access password."""
    if st.session_state.get("_admitted"):
        return
    st.title("Toptune")
    with st.form("access"):
        given = st.text_input("Password", type="password", key="access_password",
                              help="This demo server is private: ask whoever runs it for the password.")
        entered = st.form_submit_button("Enter")
    if entered:
        if hmac.compare_digest(given.encode(), password.encode()):
            st.session_state["_admitted"] = True
            st.rerun()
        time.sleep(1)  # slows down guessing
        st.error("Wrong password.")
    st.stop()


def _login_gate() -> None:
    st.title("Toptune")
    st.write("Log in to get your own workspace on this server.")
    st.button("Log in", type="primary", on_click=st.login)
    st.stop()


def _resolve(settings: Settings) -> tuple[Visitor, Optional[str]]:
    """The visitor of this session and their URL token (None for local mode and logins)."""
    visitors = Visitors(settings)
    password = _secret(PASSWORD_SECRET)
    if not settings.shared:
        if password:
            _password_gate(password)
        return visitors.local(), None
    if st.user.get("is_logged_in"):
        who = st.user.get("sub") or st.user.get("email")
        return visitors.from_identity(str(st.user.get("iss") or "login"), str(who)), None
    if _login_configured():
        _login_gate()
    given = st.query_params.get(TOKEN_PARAM)
    visitor = visitors.from_token(given)
    if visitor is not None:
        return visitor, given
    if password:
        _password_gate(password)
    token, visitor = visitors.create()
    if given:
        st.session_state["_visitor_notice"] = EXPIRED
    return visitor, token


def _sweep(settings: Settings) -> None:
    """Remove idle workspaces, at most every ``SWEEP_EVERY_S`` seconds per server; never a busy visitor's."""
    with _sweep_lock:
        if time.monotonic() - _last_sweep[0] < SWEEP_EVERY_S:
            return
        _last_sweep[0] = time.monotonic()
    busy = {j.owner for j in registry().list(active=True) if j.owner} | finetune_queue().busy_owners()
    Visitors(settings).sweep(busy)


def current(settings: Settings) -> Visitor:
    """This session's visitor (resolved on its first script run; may stop the page at a password or login)."""
    visitor: Optional[Visitor] = st.session_state.get("_visitor")
    if visitor is not None and visitor.shared and not visitor.home.is_dir():  # expired while the tab stayed open
        st.session_state["_visitor_notice"] = EXPIRED
        for key in [k for k in st.session_state if not str(k).startswith("_")] + ["_visitor", "_visitor_token"]:
            del st.session_state[key]
        st.query_params.pop(TOKEN_PARAM, None)
        visitor = None
    if visitor is None:
        if settings.shared:
            _sweep(settings)
        visitor, token = _resolve(settings)
        st.session_state["_visitor"], st.session_state["_visitor_token"] = visitor, token
    token = st.session_state.get("_visitor_token")
    if token and st.query_params.get(TOKEN_PARAM) != token:
        st.query_params[TOKEN_PARAM] = token  # page changes drop it from the URL; a reload must find it
    if visitor.shared and time.monotonic() - st.session_state.get("_visitor_seen", 0.0) > TOUCH_EVERY_S:
        Visitors.touch(visitor)
        st.session_state["_visitor_seen"] = time.monotonic()
    return visitor


def describe(visitor: Visitor) -> None:
    """The sidebar's lines about this visitor's workspace (shared mode)."""
    notice = st.session_state.pop("_visitor_notice", None)
    if notice:
        st.warning(notice)
    if not visitor.shared:
        return
    if st.user.get("is_logged_in"):
        st.caption(f":material/person: Your own workspace, as {st.user.get('email') or st.user.get('name') or 'you'}.")
        st.button("Log out", on_click=st.logout)
    else:
        st.caption(":material/link: Your private workspace lives in this page's link: bookmark it to come back. "
                   "Sharing the link shares the workspace: whoever opens it sees and changes your runs.")
    hours = visitor.limits.idle_hours
    if hours:
        st.caption(f"Workspaces unused for {hours:g} hours are removed, with their files.")
