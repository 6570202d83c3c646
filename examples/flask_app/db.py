"""A small SQLite table the callbacks write and GET /videos/<id> reads.

It stands in for your own database: one row per video, set (never appended to) by
the callbacks, so a callback that runs twice leaves the row as running it once did.
"""

import sqlite3

from flask import current_app, g

SCHEMA = """
CREATE TABLE IF NOT EXISTS video_subtitles (
    video_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,        -- 'ready' or 'failed'
    track_id TEXT,
    language_code TEXT,
    error TEXT,                  -- error["code"]
    error_message TEXT
)
"""


def get_db():
    if "db" not in g:
        # timeout: a worker and a web request may write at once; wait for the lock.
        g.db = sqlite3.connect(current_app.config["DATABASE"], timeout=20)
        g.db.row_factory = sqlite3.Row
    return g.db


def close_db(exc=None):
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def init_app(app):
    app.teardown_appcontext(close_db)
    # IF NOT EXISTS: every web process and worker runs this at start.
    with app.app_context(), get_db() as conn:
        conn.execute(SCHEMA)
