"""The admin dashboard: a static page and its assets. The page needs no token to load (it
sends the one typed in with every API call); a strict Content-Security-Policy keeps a stored
title from ever running as code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static" / "admin"
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # revalidate each load (a 304 with the ETag): a new release is never served stale
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/admin", tags=["dashboard"], include_in_schema=False)


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
def dashboard_page() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/assets/{name}")
def dashboard_asset(name: str) -> FileResponse:
    """Only the files the page uses: a path parameter never reaches the file system."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard asset {name!r}")
    return _file(name, media_type)
