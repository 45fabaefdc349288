"""Errors a user can act on.

Every error raised on purpose by toptune_core is a ``ToptuneError``: its
``str()`` is one clear line meant for an agronomist, shown in the dashboard or
printed by the command line without a traceback.
"""


class ToptuneError(Exception):
    """An error the user can act on; str(e) is one clear line, shown without a traceback."""


class DatasetError(ToptuneError):
    """The dataset folder cannot be used as it is (missing, empty, one class...)."""


class ImageError(ToptuneError):
    """One image cannot be read (corrupt, not an image, too large)."""


class BackboneError(ToptuneError):
    """The backbone is unknown or its weights cannot be loaded here."""


class RunNotFound(ToptuneError):
    """No recorded run has the given id."""


class Cancelled(ToptuneError):
    """The user cancelled the job."""


class JobInterrupted(ToptuneError):
    """A job's process was stopped from outside (not by the user's cancel)."""


class LimitReached(ToptuneError):
    """A visitor reached one of the server's limits (runs, disk, jobs, upload size); nothing was changed."""


class PathNotAllowed(ToptuneError):
    """A folder outside the ones this server allows (shared mode)."""


class ProcessStopped(BaseException):
    """A job's process was told to stop (SIGTERM): raised by its signal handler wherever the process is.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way (a photo
    decoder's, which turns any error into "unreadable photo") can swallow it. ``status``: how the run ends,
    ``cancelled`` (the user asked) or ``interrupted`` (the dashboard or the machine stopped).
    """

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
