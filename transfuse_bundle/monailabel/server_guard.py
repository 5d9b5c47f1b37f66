"""What the TransFuse MONAI Label app refuses, and how: one-line HTTP 400/403/404 answers before any work.

The stock ``monaibundle`` app of monailabel 0.8.5 trusts its clients: a datastore id or label tag such as
``../x`` or ``/abs/x`` becomes a path outside the studies folder (``PUT /datastore/image?image=../x`` writes
there), ``?image=/any/file`` makes ``/infer`` read any file of the server, any web page may call the server
with the user's credentials (its CORS middleware allows every ``Origin`` with credentials), and a missing
image, an unknown model or a file that is not an image answer a bare HTTP 500. This module is the layer that
:func:`transfuse_bundle.monailabel.app.ensure_app` installs with the active-learning app (the app's
``main.py`` mixes :class:`ServerGuardMixin` into the stock ``MyApp``):

* ids and tags (the query parameters of :data:`ID_PARAMETERS`, and the id an upload's file name gives) must be
  plain names (:func:`check_name`): HTTP 400 otherwise, before anything is read or written. A studies folder
  served from a URL (DICOMweb, XNAT, DSA) keeps its own ids.
* cross-origin requests: only the origins of the app option ``--conf cors_origins URL[,URL...]`` (none by
  default; MONAI Label's own ``MONAI_LABEL_CORS_ORIGINS`` makes 0.8.5 fail at start) get CORS headers, and a
  request whose ``Origin`` is neither one of them nor the server itself is refused with HTTP 403 (a browser sends ``Origin`` with every cross-origin ``POST``, which CORS alone would
  let through unread).
* ``MONAILabelException`` answers: ``INVALID_INPUT`` -> 400, a missing image, label or model -> 404, with the
  reason as ``{"detail": "..."}``; an image the model cannot read (not an image, a broken file) -> 400 naming it,
  and so does a ``/train?run_sync=true`` whose datastore holds a file the bundle's data checks refuse.
* batch inference on a machine without a GPU runs on the CPU (the stock app divides by the empty GPU list).
* training passes ``overwrite: true``: the app retrains the served ``models/model.pt`` in place, by design.

The file imports only MONAI Label, FastAPI/Starlette (MONAI Label's server), torch and PIL: ``ensure_app``
copies it into the app folder (``transfuse_server_guard.py``) so that the server needs no ``transfuse_bundle``.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, Optional
from urllib.parse import parse_qsl, urlsplit

import torch
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.exception import (ImageNotFoundException, LabelNotFoundException, MONAILabelError,
                                             MONAILabelException)
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)

__all__ = ["ID_PARAMETERS", "CORS_OPTION", "BadRequest", "Conflict", "NotFound", "check_name", "allowed_origins", "install_http_guard",
           "GuardedLocalDatastore", "ServerGuardMixin", "unreadable_input"]

#: query parameters that name a datastore image, label, or label tag (a file or folder in the studies folder)
ID_PARAMETERS = ("image", "label", "id", "tag")
#: longest id or tag, in UTF-8 bytes: file systems allow 255 per file name, and the extension comes on top
MAX_NAME_BYTES = 200


class _Refusal(MONAILabelException):
    """A refused request; ``str()`` is the message, the one line the client reads (MONAILabelException's own
    ``str()`` is the tuple of its error code and message)."""

    ERROR = MONAILabelError.APP_ERROR

    def __init__(self, msg: str):
        super().__init__(self.ERROR, msg)

    def __str__(self) -> str:
        return self.msg


class BadRequest(_Refusal):
    """HTTP 400: a value or file the server cannot use."""

    ERROR = MONAILabelError.INVALID_INPUT


class Conflict(_Refusal):
    """HTTP 409: a request that would replace what the datastore holds."""


class NotFound(_Refusal):
    """HTTP 404: a model, image or label that does not exist."""


def check_name(value: str, what: str) -> str:
    """Returns ``value`` if it is a plain file name (what a datastore id or label tag becomes on disk), else
    raises :class:`BadRequest` naming it: no ``/`` or ``\\``, no leading ``.`` (``..``, and hidden files such
    as the datastore's lock), no NUL, not empty, at most :data:`MAX_NAME_BYTES`."""
    if not value or value.startswith(".") or any(c in value for c in "/\\\0"):
        raise BadRequest(f"{what} {value!r} is not a plain name (no '/', '\\', NUL or leading '.'): "
                         f"ids and tags name files inside the studies folder")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"{what} {value[:40]!r}... is {len(value.encode('utf-8', 'surrogatepass'))} bytes long: "
                         f"at most {MAX_NAME_BYTES} (a file name, with its extension, has at most 255)")
    return value


#: the app option (``--conf cors_origins ...``) listing the web origins allowed to call the server
CORS_OPTION = "cors_origins"


def allowed_origins(conf: Dict[str, str]) -> list[str]:
    """The origins of the app option :data:`CORS_OPTION` (comma-separated ``scheme://host[:port]``, a trailing
    ``/`` dropped), or raises :class:`BadRequest` naming one that is not of that form; empty: none."""
    origins = [o.strip().rstrip("/") for o in str(conf.get(CORS_OPTION, "")).split(",") if o.strip()]
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise BadRequest(f"--conf {CORS_OPTION} {origin!r}: expected origins such as http://127.0.0.1:3000 "
                             f"(scheme, host and port only), separated by commas")
    return origins


def _same_origin(origin: str, host: Optional[str]) -> bool:
    """Whether ``origin`` (``scheme://host:port``) names the host the request was sent to (its ``Host`` header)."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == host.lower()


class _HttpGuard:
    """ASGI middleware: refuses bad ids and tags in the query (400) and requests from other origins (403)."""

    def __init__(self, app, origins: Iterable[str], check_ids: bool):
        self.app, self.origins, self.check_ids = app, set(origins), check_ids

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                from starlette.responses import JSONResponse

                status, detail = refusal
                logger.warning(f"Refused {scope['method']} {scope['path']} ({status}): {detail}")
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> Optional[tuple[int, str]]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins and not _same_origin(origin, headers.get("host")):
            return 403, (f"requests from origin {origin!r} are not allowed: add it to the server's "
                         f"--conf {CORS_OPTION} (docs/monailabel.md, Security)")
        if self.check_ids:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            for key, value in query:
                if key in ID_PARAMETERS and value:
                    try:
                        check_name(value, key)
                    except BadRequest as e:
                        return 400, e.msg
        return None


def _exception_answer(request, error: MONAILabelException):
    from starlette.responses import JSONResponse

    if isinstance(error, (NotFound, ImageNotFoundException, LabelNotFoundException)):
        status = 404
    else:
        status = 409 if isinstance(error, Conflict) else 400 if error.error == MONAILabelError.INVALID_INPUT else 500
    detail = str(error.msg).strip().splitlines()[0] if str(error.msg).strip() else error.error.value
    return JSONResponse({"detail": detail}, status_code=status)


def install_http_guard(fastapi_app, origins: list[str], check_ids: bool) -> None:
    """Puts the guard into MONAI Label's FastAPI app (``monailabel.app.app``), while the server starts.

    MONAI Label builds its app at import, before it loads the app's ``main.py``, and Starlette builds the
    middleware stack at the first event (the start-up itself): so the CORS middleware's origins are replaced,
    :class:`_HttpGuard` is added inside it, the :class:`MONAILabelException` answers are registered, and the
    stack is built again; the requests that follow go through the new one.
    """
    from fastapi.middleware.cors import CORSMiddleware
    from starlette.middleware import Middleware

    middleware = [m for m in fastapi_app.user_middleware if m.cls not in (CORSMiddleware, _HttpGuard)]
    middleware += [
        Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"],
                   allow_headers=["*"]),
        Middleware(_HttpGuard, origins=origins, check_ids=check_ids),
    ]
    fastapi_app.user_middleware = middleware
    fastapi_app.exception_handlers[MONAILabelException] = _exception_answer
    fastapi_app.middleware_stack = fastapi_app.build_middleware_stack()
    logger.info(f"Allowed origins: {origins or 'none (this server only)'}; datastore ids checked: {check_ids}")


class GuardedLocalDatastore(LocalDatastore):
    """MONAI Label's local datastore, refusing ids and tags that are not plain names (:func:`check_name`):
    an upload without ``?image=`` takes its id from the client's file name, which no query check sees."""

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        if image_id:
            check_name(image_id, "image id")
            name = image_id + self._to_id(os.path.basename(image_filename))[1]
            if name == os.path.basename(self._datastore_config_path):
                raise BadRequest(f"image id {image_id!r}: {name} is the datastore's own index file")
            if image_id in self._datastore.objects:  # MONAI Label would replace the image under its labels
                raise Conflict(f"image {image_id!r} exists in the datastore: remove it first "
                               f"(DELETE /datastore/image?id={image_id}) or upload under another id")
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_name(image_id, "image id")
        check_name(label_tag, "label tag")
        if not self.get_image_uri(image_id):
            raise ImageNotFoundException(f"no image {image_id!r} in the datastore: upload it first")
        return super().save_label(image_id, label_filename, label_tag, label_info)


def unreadable_input(error: BaseException) -> Optional[str]:
    """The one-line reason when ``error`` (or an exception it wraps) says an input file could not be read or was
    refused by the bundle's data checks (its ``UserInputError``), else None: a server fault stays a 500."""
    from PIL import UnidentifiedImageError

    try:
        from nibabel.filebasedimages import ImageFileError
    except ImportError:  # pragma: no cover (MONAI Label depends on nibabel)
        ImageFileError = UnidentifiedImageError
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        # MONAI's LoadImage, when no reader takes the file (the readers' own errors are only in its message)
        if isinstance(error, RuntimeError) and "cannot find a suitable reader" in str(error):
            return "no image reader of MONAI can read it (not an image, or a broken file)"
        # the bundle's modules may be a copy (the bundle folder's) of transfuse_bundle: matched by class name
        if isinstance(error, (UnidentifiedImageError, ImageFileError)) or any(
                c.__name__ == "UserInputError" for c in type(error).__mro__):
            lines = str(error).strip().splitlines()
            return lines[0] if lines else type(error).__name__
        error = error.__cause__ or error.__context__
    return None


def _retrain_in_place(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``BundleTrainTask._update_overrides``: the app retrains the served weights, so training may replace them."""
    overrides["overwrite"] = True
    return overrides


class ServerGuardMixin:
    """Mixed into the stock ``monaibundle`` app's ``MyApp`` (see the app's ``main.py`` and the module docstring)."""

    def init_datastore(self):
        store = super().init_datastore()
        if type(store) is LocalDatastore:  # the same arguments as MONAILabelApp.init_datastore
            store = GuardedLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                          auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                          read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)
        return store

    def init_trainers(self):
        trainers = super().init_trainers()
        for task in trainers.values():
            if isinstance(task, BundleTrainTask):
                task._update_overrides = _retrain_in_place
        return trainers

    def on_init_complete(self):
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")  # imported by the server only (not by its training processes)
        if server is not None and hasattr(server, "app"):
            install_http_guard(server.app, allowed_origins(self.conf),
                               check_ids=isinstance(self.datastore(), LocalDatastore))

    def infer(self, request, datastore=None):
        model = _known(request.get("model"), self._infers, "model", "serves")
        image = request.get("image")
        store = datastore if datastore else self.datastore()
        by_id = isinstance(image, str) and not os.path.exists(image)  # else an upload's temporary file (or an array)
        if by_id and isinstance(store, LocalDatastore):
            if not image:
                raise BadRequest("no image: pass ?image=ID of the datastore or upload a file")
            if not store.get_image_uri(image):
                raise ImageNotFoundException(f"no image {image!r} in the datastore")
        with _input_refusals(f"{model}: {f'image {image!r}' if by_id else 'the uploaded file'} cannot be read"):
            return super().infer(request, datastore)

    def next_sample(self, request):
        _known(request.get("strategy"), self._strategies, "strategy", "offers")
        return super().next_sample(request)

    def batch_infer(self, request, datastore=None):
        _known(request.get("model"), self._infers, "model", "serves")
        if not torch.cuda.is_available():  # the stock task spreads the images over an empty list of GPUs
            request = {**request, "multi_gpu": False, "device": "cpu"}
        return super().batch_infer(request, datastore)

    def train(self, request):
        model = _known(request.get("model"), self._trainers, "model", "trains")
        epochs = request.get("max_epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise BadRequest(f"max_epochs {epochs!r}: expected a whole number of epochs, at least 1")
        with _input_refusals(f"{model}: training refused"):
            return super().train(request)


def _known(name: Optional[str], tasks: Dict[str, Any], kind: str, verb: str) -> Optional[str]:
    """Returns ``name`` unless it names none of ``tasks`` (raises :class:`NotFound` listing them)."""
    if name and name not in tasks:
        raise NotFound(f"no {kind} {name!r}: this server {verb} {sorted(tasks)}")
    return name


@contextmanager
def _input_refusals(what: str) -> Iterator[None]:
    """Turns an exception that says an input file cannot be read (:func:`unreadable_input`) into
    :class:`BadRequest` ``"{what}: {reason}"``; any other exception (a server fault) passes unchanged."""
    try:
        yield
    except MONAILabelException:
        raise
    except Exception as e:
        reason = unreadable_input(e)
        if reason is None:
            raise
        raise BadRequest(f"{what}: {reason}") from e
