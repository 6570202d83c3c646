"""The workers' entry point: ``celery -A flask_app.worker:celery_app worker``.

(Flask's documentation names this module make_celery.py.) It builds the Flask app from
the environment, so tasks see the same configuration as the web processes.
"""

from . import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
