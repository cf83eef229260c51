"""Path parameters the routes share (no `from __future__ import annotations`: FastAPI
reads these annotations as objects)."""

from typing import Annotated

from fastapi import Path

# A row number of server.db: SQLite's integers end at 2**63 - 1.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a job's or rollout's number")]
