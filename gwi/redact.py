"""Secret values kept out of what gwi records and shows.

gwi hands secrets to jobs through their environment (the store's ``AWS_*``, a platform's
credentials, whatever a local job inherits). A job that prints one (``echo $AWS_SECRET_ACCESS_KEY``,
a traceback quoting a URL with a token) would otherwise have it copied into the state's events and
end reasons, the console, ``gwi status``, ``gwi logs`` and the dashboard. The scheduler writes
every text through a :class:`Redactor` made from the values of the variables it knows hold secrets,
and ``gwi logs`` shows log tails through the same one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_LENGTH = 8  # shorter values ("1", "true", a region, a preset name) are not secrets; masking them garbles text
# names that hold a secret whatever the profile says (a local job inherits this shell's environment)
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|_KEY$|^KEY$)", re.I)
STORE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class Redactor:
    """``redactor(text)``: ``text`` with every known secret value replaced by ``***``."""

    def __init__(self, values: Iterable[str] = ()):
        # longest first: a secret that contains another is masked whole
        self.values = sorted({v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_LENGTH},
                             key=len, reverse=True)

    def __call__(self, text):
        if not isinstance(text, str) or not self.values:
            return text
        for v in self.values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    @classmethod
    def from_environ(cls, names: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> "Redactor":
        """The values of ``names`` (a platform's declared credentials), of the store's credentials and
        of every variable whose name says it is a secret, as set in ``environ`` (default: this process)."""
        environ = os.environ if environ is None else environ
        wanted = set(names) | set(STORE_SECRETS)
        return cls(v for k, v in environ.items() if k in wanted or SECRET_NAME.search(k))
