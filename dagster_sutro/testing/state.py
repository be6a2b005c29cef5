"""The state that the emulator's API and storage servers share."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dagster_sutro.testing.clock import EmulatorClock
from dagster_sutro.testing.faults import FaultController, UrlLifetime
from dagster_sutro.testing.sigv4 import PresignedUrlSigner
from dagster_sutro.testing.store import JobStore


@dataclass
class EmulatorState:
    """Everything a request handler needs, owned by one ``SutroEmulator``.

    Attributes:
        api_key: The API key every API request must carry.
        clock: The emulator clock.
        store: The jobs and their artifacts.
        faults: The fault rules.
        signer: Signs and verifies presigned URLs.
        storage_origin: ``http://127.0.0.1:<port>`` of the storage server, set once it listens.
        storage_bytes_per_second: Cap on each storage connection's body rate, or ``None``.
    """

    api_key: str
    clock: EmulatorClock
    store: JobStore
    faults: FaultController
    signer: PresignedUrlSigner
    storage_origin: str = ""
    storage_bytes_per_second: float | None = None
    _expiry_styles: dict[str, UrlLifetime] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def remember_expiry_style(self, signature: str, lifetime: UrlLifetime) -> None:
        """Remember how expiry of a URL signed under a ``url_lifetime`` rule is reported."""
        with self._lock:
            self._expiry_styles[signature] = lifetime

    def expiry_style(self, signature: str) -> UrlLifetime | None:
        """Return the ``url_lifetime`` rule a URL was signed under, if any."""
        with self._lock:
            return self._expiry_styles.get(signature)
