"""A local HTTP simulator of DatoCMS's "generate subtitles track" API.

Run it inside a test suite (``Simulator(...).start()``, or the pytest fixtures
``datocms_simulator`` / ``datocms_simulator_factory``) or from a shell
(``subtitle-tasks simulate`` / ``python -m subtitle_tasks.testing.simulator``),
then point a DatoCMS client at ``sim.url`` instead of the real API base URL.

API endpoints (same paths, headers, bodies and error documents as DatoCMS):

* ``POST /uploads/{upload_id}/tracks/generate-subtitles`` -> 202 job
* ``GET  /job-results/{job_id}``  -> 404 ``NOT_FOUND`` while the job runs, then 200
* ``GET  /uploads/{upload_id}/tracks`` -> 200 list of upload_track resources
* ``GET  /uploads`` -> 200 page of upload resources (see ``uploads``)

Every API request must carry ``Authorization: Bearer <token>`` and
``X-Api-Version: 3``; ``X-Environment`` is optional.

Environments
------------
``config.environments`` (None: any) lists the ``X-Environment`` names that
exist; others get 422 ``INVALID_ENVIRONMENT``. ``config.immutable_environments``
(empty by default) lists sandboxes whose upload tracks cannot be changed: a
generate-subtitles POST naming one answers 422
``IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT`` (after the upload and body
checks) and creates nothing; reading job results and track lists still works.

Tokens are never printed, logged, or shown by the control endpoints.

Modules
-------
* ``config``   ``SimulatorConfig``: timings, rate limit, token, environments, faults
* ``core``     ``Simulator``: its state and how it answers each API request
* ``uploads``  upload kinds (magic prefixes) and the uploads ``GET /uploads`` lists
* ``jobs``     generate-subtitles jobs: the POST body, timing, what a job reports
* ``limiter``  the per-token sliding-window rate limit
* ``faults``   the faults it can inject and the answers they give
* ``control``  the ``/_simulator/`` control endpoints
* ``routes``   an API request: its route, headers, and the ``RequestRecord`` logged
* ``replies``  an answer, and the JSON:API error documents
* ``server``   the threaded HTTP server in front of a ``Simulator``
* ``cli``      ``subtitle-tasks simulate`` (``__main__``: ``python -m``)
"""

from __future__ import annotations

from .cli import main
from .config import BODY_TYPES, SimulatorConfig
from .core import Simulator
from .faults import FAULT_NAMES, HUGE_BODY_BYTES, REDIRECT_HOST
from .routes import RequestRecord
from .uploads import MAGIC_PREFIXES, MAX_PAGE_LIMIT, UPLOAD_KINDS

__all__ = [
    "BODY_TYPES",
    "FAULT_NAMES",
    "HUGE_BODY_BYTES",
    "MAGIC_PREFIXES",
    "MAX_PAGE_LIMIT",
    "REDIRECT_HOST",
    "UPLOAD_KINDS",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "main",
]
