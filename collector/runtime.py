"""Where things are: which config, which data directory, which store and broker URLs.

Precedence for each: command-line option > environment variable > config file > default.
    config    --config    DXKPI_CONFIG                         the shipped example config
    data dir  --data-dir  DXKPI_DATA_DIR     data_dir          $XDG_DATA_HOME/dxkpi/<config's>
    store                 DXKPI_STORAGE_URL  storage.url       sqlite:///<data dir>/dxkpi.sqlite
    broker                DXKPI_BROKER_URL   broker.url        sqla+sqlite:///<data dir>/broker.db
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, SecretStr

from dxkpi.collector.config import ENV_REF, LoadedConfig, load_config
from dxkpi.collector.errors import DxkpiError
from dxkpi.collector.redact import install_log_redaction, register_secrets, url_password
from dxkpi.collector.storage import Store

EXAMPLE_CONFIG = Path(__file__).parent / "example" / "dxkpi.yaml"


def default_data_dir(config_path: Path) -> Path:
    """A directory of the config's own, e.g. `~/.local/share/dxkpi/example-3f2a9c1e`: two
    checkouts or two configs never share a store by accident. Named after the config's folder
    (for people) and a hash of its absolute path (to tell two folders of one name apart)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    path = config_path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return Path(base) / "dxkpi" / f"{path.parent.name or 'root'}-{digest}"


@dataclass
class Runtime:
    loaded: LoadedConfig
    data_dir: Path
    storage_url: str
    broker_url: str
    # The Celery queue; sites sharing one Redis give each deployment its own (DXKPI_QUEUE).
    queue: str = "dxkpi"
    _store: Store | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = Store(self.storage_url, orgs=self.loaded.source_orgs())
            return self._store

    @property
    def beat_state(self) -> Path:
        """Beat's schedule file, keyed by queue and config: deployments that share a data
        directory keep their own (Celery adds suffixes to it on some platforms)."""
        digest = hashlib.sha256(str(self.loaded.path.resolve()).encode()).hexdigest()[:8]
        return self.data_dir / f"celerybeat-schedule-{self.queue}-{digest}"

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("sqla+sqlite")


def resolve(
    config_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    *,
    make_dirs: bool = True,
) -> Runtime:
    """The runtime of a config. `make_dirs=False` (commands that only read) creates nothing."""
    path = Path(config_path or os.environ.get("DXKPI_CONFIG") or EXAMPLE_CONFIG)
    loaded = load_config(path)
    config = loaded.config
    chosen = data_dir or os.environ.get("DXKPI_DATA_DIR") or config.data_dir
    directory = Path(chosen).expanduser() if chosen else default_data_dir(loaded.path)
    if not directory.is_absolute():
        directory = (Path.cwd() / directory).resolve()
    storage = (
        os.environ.get("DXKPI_STORAGE_URL")
        or config.storage.url
        or f"sqlite:///{directory / 'dxkpi.sqlite'}"
    )
    broker = (
        os.environ.get("DXKPI_BROKER_URL")
        or config.broker.url
        or f"sqla+sqlite:///{directory / 'broker.db'}"
    )
    register_secrets(configured_secrets(loaded, storage, broker))
    install_log_redaction()
    # Every process that may write keeps state there (beat its schedule, the embedded store and
    # broker); a command that only reads creates nothing.
    if make_dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DxkpiError(
                f"data directory {directory}: cannot create it ({exc.strerror}); "
                "choose another with --data-dir or DXKPI_DATA_DIR"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise DxkpiError(
                f"data directory {directory} is not writable by this user; "
                "choose another with --data-dir or DXKPI_DATA_DIR"
            )
    return Runtime(
        loaded=loaded,
        data_dir=directory,
        storage_url=storage,
        broker_url=broker,
        queue=os.environ.get("DXKPI_QUEUE") or "dxkpi",
    )


# A `${ENV}` value not declared secret is masked only from this length: a port or a flag would
# otherwise be blanked out of every message that happens to contain its digits.
_SHORTEST_ENV_SECRET = 8


def _secret_values(value: object) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return [s for item in value.__dict__.values() for s in _secret_values(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _secret_values(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _secret_values(item)]
    return []


def configured_secrets(loaded: LoadedConfig, *urls: str) -> list[str]:
    """Every secret this deployment knows, whichever source or URL it belongs to: each
    source's secret settings, every `${ENV}` value the config file refers to, and the URLs'
    passwords. Any of them may turn up in another source's error (a shared file, a proxy page)."""
    found = [s for settings in loaded.settings.values() for s in _secret_values(settings)]
    text = loaded.path.read_text(encoding="utf-8")
    # Names templated per organisation (`${KEY_{{ORG}}}`) exist only once expanded.
    text += "".join(str(source.settings) for source in loaded.config.sources)
    found += [
        value
        for name in set(ENV_REF.findall(text))
        if len(value := os.environ.get(name, "")) >= _SHORTEST_ENV_SECRET
    ]
    found += [password for url in urls if (password := url_password(url))]
    return found


_current: Runtime | None = None
_current_lock = threading.Lock()


def current() -> Runtime:
    """The process-wide runtime (built from the environment on first use, e.g. in a worker)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = resolve()
        return _current


def set_current(runtime: Runtime | None) -> None:
    global _current
    with _current_lock:
        _current = runtime
