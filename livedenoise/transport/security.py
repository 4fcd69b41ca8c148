"""Who may connect: loopback needs nothing; anything else needs an explicit opt-in and CURVE keys.

A livedenoise server (publisher, control socket) binds loopback endpoints by default
(``tcp://127.0.0.1:...``, ``tcp://localhost:...``, ``tcp://[::1]:...``, ``ipc://``,
``inproc://``) and those need no keys. Binding anything else must be the user's explicit
choice (``ServerSecurity(key_dir, allow_remote=True)``, ``--allow-remote`` on the command
line), and then every socket is protected with ZeroMQ CURVE:

- the server's key pair lives in ``key_dir`` (``server.key`` public, ``server.key_secret``
  private, mode 0600), created on first use;
- a client (viewer) is admitted when its public certificate is in ``key_dir/authorized/``.
  The folder is read at every connection attempt: adding or removing a certificate takes
  effect for the next connection, without a restart.

A viewer gets its own key pair with :func:`create_client_keys` (pass the server's key
folder to authorise it at once) and connects with ``ClientSecurity(secret_file,
server_public_file)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livedenoise.util.endpoints import is_loopback

__all__ = [
    "ClientSecurity",
    "SecurityError",
    "ServerSecurity",
    "authorize_client",
    "bind",
    "check_bind",
    "create_client_keys",
    "ensure_server_keys",
    "is_loopback",
    "release_server",
    "secure_client",
    "secure_server",
]

log = logging.getLogger("livedenoise")

SERVER_NAME = "server"
AUTHORIZED = "authorized"


class SecurityError(ValueError):
    """A bind or connect that the security rules do not allow, or unusable keys."""


@dataclass(frozen=True)
class ServerSecurity:
    """CURVE for a server socket.

    Parameters
    ----------
    key_dir
        Folder with the server key pair and the ``authorized/`` client certificates
        (created if absent).
    allow_remote
        The explicit choice to bind non-loopback endpoints. Without it such a bind raises
        :class:`SecurityError` even with keys.
    """

    key_dir: Path
    allow_remote: bool = False


@dataclass(frozen=True)
class ClientSecurity:
    """CURVE for a client socket.

    Parameters
    ----------
    secret_file
        The client's secret certificate (``NAME.key_secret`` from :func:`create_client_keys`).
    server_public_file
        The server's public certificate (``server.key`` in the server's key folder).
    """

    secret_file: Path
    server_public_file: Path


def check_bind(endpoint: str, security: ServerSecurity | None) -> None:
    """Raise :class:`SecurityError` unless binding ``endpoint`` is allowed."""
    if is_loopback(endpoint):
        return
    if security is None or not security.allow_remote:
        raise SecurityError(
            f"{endpoint} is not a loopback address: binding it would let other machines connect. "
            "Keep the default tcp://127.0.0.1:PORT, or opt in explicitly with --allow-remote "
            "--keys DIR (ServerSecurity(key_dir, allow_remote=True)); clients then need a CURVE key "
            "pair whose public certificate is in DIR/authorized/ (`create_client_keys`)."
        )


def ensure_server_keys(key_dir: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """Create the server key pair and ``authorized/`` in ``key_dir`` if absent; return (public, secret)."""
    import zmq.auth

    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / AUTHORIZED).mkdir(exist_ok=True)
    secret_file = key_dir / f"{SERVER_NAME}.key_secret"
    if not secret_file.exists():
        _create_pair(key_dir, SERVER_NAME)
    public, secret = zmq.auth.load_certificate(secret_file)
    if not secret:
        raise SecurityError(f"{secret_file} holds no secret key; delete it to create a new server key pair")
    return public, secret


def create_client_keys(
    key_dir: str | os.PathLike[str],
    name: str = "viewer",
    *,
    authorize_in: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Create a client key pair ``NAME.key`` / ``NAME.key_secret`` (0600) in ``key_dir``.

    Parameters
    ----------
    key_dir
        Where the client keeps its keys (created if absent).
    name
        File name stem, e.g. the viewer's name.
    authorize_in
        A server key folder: the new public certificate is copied into its ``authorized/``.

    Returns
    -------
    (public_file, secret_file)
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == SERVER_NAME:
        raise SecurityError(
            f"client key name must be letters, digits, '_', '.', '-' and not {SERVER_NAME!r}; got {name!r}"
        )
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    if (key_dir / f"{name}.key_secret").exists():
        raise SecurityError(f"{key_dir / (name + '.key_secret')} exists; choose another name or reuse it")
    public_file, secret_file = _create_pair(key_dir, name)
    if authorize_in is not None:
        authorize_client(authorize_in, public_file)
    return public_file, secret_file


def authorize_client(server_key_dir: str | os.PathLike[str], public_file: str | os.PathLike[str]) -> Path:
    """Copy a client's public certificate into ``server_key_dir/authorized/`` (effective at its next connection)."""
    import zmq.auth

    public_file = Path(public_file)
    _public, secret = zmq.auth.load_certificate(public_file)  # raises ValueError on a bad file
    if secret:
        raise SecurityError(f"{public_file} contains a secret key; authorise the public .key file instead")
    dest_dir = Path(server_key_dir) / AUTHORIZED
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / public_file.name
    shutil.copyfile(public_file, dest)
    return dest


def _create_pair(key_dir: Path, name: str) -> tuple[Path, Path]:
    """Create a key pair in a private (0700) temporary folder, then move it into place."""
    import zmq.auth

    tmp = Path(tempfile.mkdtemp(prefix=".keys-", dir=key_dir))
    try:
        pub, sec = (Path(p) for p in zmq.auth.create_certificates(tmp, name))
        os.chmod(sec, 0o600)
        os.chmod(pub, 0o644)
        os.replace(sec, key_dir / sec.name)
        os.replace(pub, key_dir / pub.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return key_dir / pub.name, key_dir / sec.name


class _AuthorizedFolder:
    """ZAP credentials provider: a client key is admitted if its certificate is in ``folder``.

    The folder is read at every connection (a key added or removed takes effect at once).
    A file that cannot be read or is not a public certificate is skipped with a warning
    (once per file version); the other clients are still admitted.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._warned: set[tuple[str, float]] = set()

    def keys(self) -> set[bytes]:
        """The public keys (Z85) of the readable certificates in the folder."""
        import zmq.auth

        keys: set[bytes] = set()
        try:
            files = sorted(self.folder.glob("*.key"))
        except OSError as exc:
            log.error("cannot list authorised client keys in %s: %s", self.folder, exc)
            return keys
        for f in files:
            try:
                public, _secret = zmq.auth.load_certificate(f)
                if not public:
                    raise ValueError("no public-key line")
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                try:
                    stamp = f.stat().st_mtime
                except OSError:
                    stamp = -1.0
                if (str(f), stamp) not in self._warned:
                    self._warned.add((str(f), stamp))
                    log.warning(
                        "skipping %s in the authorised client keys: it is not a readable public "
                        "certificate (%s); the other keys still admit their clients",
                        f,
                        type(exc).__name__,
                    )
                continue
            keys.add(bytes(public))
        return keys

    def callback(self, domain: str, z85_key: bytes) -> bool:
        ok = bytes(z85_key) in self.keys()
        if not ok:
            log.warning("refused a CURVE client whose key is not in %s", self.folder)
        return ok


# one ZAP authenticator per context (ZeroMQ allows only one handler per context)
_auth_lock = threading.Lock()
_authenticators: dict[int, list[Any]] = {}  # id(context) -> [authenticator, users, domains]


def secure_server(socket: Any, security: ServerSecurity) -> None:
    """Make ``socket`` a CURVE server admitting the certificates in ``key_dir/authorized/``.

    Call before ``bind``; call :func:`release_server` with the same socket's context when
    the socket is closed.
    """
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = ensure_server_keys(security.key_dir)
    authorized = Path(security.key_dir) / AUTHORIZED
    domain = "livedenoise-" + hashlib.sha1(str(Path(security.key_dir).resolve()).encode()).hexdigest()[:12]
    ctx = socket.context
    with _auth_lock:
        entry = _authenticators.get(id(ctx))
        if entry is None:
            auth = ThreadAuthenticator(ctx, log=logging.getLogger("livedenoise.auth"))
            auth.start()
            entry = _authenticators[id(ctx)] = [auth, 0, set()]
        if domain not in entry[2]:
            entry[0].configure_curve_callback(
                domain=domain, credentials_provider=_AuthorizedFolder(authorized)
            )
            entry[2].add(domain)
        entry[1] += 1
    n = len(list(authorized.glob("*.key")))
    if n == 0:
        log.warning(
            "no client is authorised in %s: nobody can connect until a public .key file is put there",
            authorized,
        )
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    socket.zap_domain = domain.encode()


def release_server(context: Any) -> None:
    """Drop one user of the context's authenticator; stop it when none is left."""
    with _auth_lock:
        entry = _authenticators.get(id(context))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _authenticators[id(context)]
    entry[0].stop()


def secure_client(socket: Any, security: ClientSecurity) -> None:
    """Make ``socket`` a CURVE client with the given keys. Call before ``connect``."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(security.secret_file)
        server_public, _ = zmq.auth.load_certificate(security.server_public_file)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read CURVE keys ({exc}); create them with create_client_keys()") from exc
    if not secret:
        raise SecurityError(f"{security.secret_file} holds no secret key; pass the NAME.key_secret file")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


def bind_server(
    socket: Any, endpoint: str, *, security: ServerSecurity | None, context: Any, option: str
) -> str:
    """Prepare a server socket (IPv6 where the endpoint asks, CURVE when ``security``) and bind it.

    Returns the endpoint actually bound. On failure the CURVE authenticator taken for this
    socket is released again; the caller closes the socket.
    """
    import zmq

    if "[" in endpoint:
        socket.setsockopt(zmq.IPV6, 1)
    if security is not None:
        secure_server(socket, security)
    try:
        return bind(socket, endpoint, option=option)
    except BaseException:
        if security is not None:
            release_server(context)
        raise


def bind(socket: Any, endpoint: str, *, option: str) -> str:
    """Bind ``socket`` to ``endpoint``; return the endpoint actually bound (``*`` ports resolved).

    A busy port raises ``OSError(EADDRINUSE)`` naming the endpoint and the command-line
    ``option`` to change it; other bind failures raise ``OSError`` saying what was expected.
    """
    import errno

    import zmq

    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            m = re.match(r"^(tcp://.*):(\d+)$", endpoint)
            other = f"{m.group(1)}:{int(m.group(2)) + 2}" if m else "another endpoint"
            raise OSError(
                errno.EADDRINUSE,
                f"{endpoint} is already in use (another livedenoise?); pass {option} {other} or stop the other program",
            ) from None
        raise OSError(
            exc.errno,
            f"cannot bind {endpoint}: {exc.strerror}; expected an endpoint like tcp://127.0.0.1:5555 or ipc:///tmp/name",
        ) from None
    last = socket.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)
