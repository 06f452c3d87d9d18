"""Static files under /static: the browser client always, the demo's assets only in demo mode."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEMO_DIR = STATIC_DIR / "demo"


class StaticAssets(StaticFiles):
    """api/static: attribution.js for every shop; the demo/ folder only with ATTRIBUTION_DEMO=true."""

    def __init__(self, *, demo: bool) -> None:
        super().__init__(directory=STATIC_DIR)
        self.demo = demo

    async def get_response(self, path: str, scope: Scope) -> Response:
        """Serve the file, answering 404 for the demo's files when the demo is off."""
        if not self.demo and PurePosixPath(path).parts[:1] == ("demo",):
            raise HTTPException(status_code=404, detail="the demo is off: set ATTRIBUTION_DEMO=true")
        return await super().get_response(path, scope)
