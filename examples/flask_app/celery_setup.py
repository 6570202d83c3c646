"""One Celery app per Flask app, as Flask's "Background Tasks with Celery" pattern makes it."""

from celery import Celery, Task

import subtitle_tasks


def celery_init_app(app):
    class FlaskTask(Task):
        # Tasks (our callbacks) run inside this Flask app's context: its config, get_db().
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    # Not made current: the views pass app= to subtitle_tasks, so two apps made by
    # create_app in one process (tests) never borrow each other's wiring. The worker
    # makes its app current itself.
    celery_app = Celery(app.name, task_cls=FlaskTask, set_as_current=False)
    celery_app.config_from_object(app.config["CELERY"])
    # In workers: registers subtitle_tasks.*, adds the dispatcher thread, routes them to
    # their own queue and consumes it too. In web processes: status() and cancel() publish
    # through this app. The state Redis defaults to this app's broker. A bad setting
    # raises ConfigurationError here, when the app is created.
    subtitle_tasks.init_app(celery_app, **{"broker_url": celery_app.conf.broker_url, **app.config["SUBTITLE_TASKS"]})
    app.extensions["celery"] = celery_app
    return celery_app
