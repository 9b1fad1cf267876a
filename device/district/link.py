"""DICOMweb to the district's Orthanc: STOW-RS (store), QIDO-RS (find), WADO-RS (read), over HTTP(S) with the
box's account. Every failure becomes one of two errors with a sentence for the page: ``LinkDown`` (no answer:
wait for the link) or ``Refused`` (the district answered no, or something the box cannot accept)."""
from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass

import requests

STOW_OK_TAG = "00081199"  # ReferencedSOPSequence: what the district stored
STOW_FAILED_TAG = "00081198"  # FailedSOPSequence
SOP_UID_TAG = "00081155"


class LinkError(Exception):
    """The message is the operator's one line."""


class LinkDown(LinkError):
    pass


class Refused(LinkError):
    pass


STATUS_WORDS = {
    401: "the district refused this box's user name or password (401): check them in Settings",
    403: "the district's account of this box may not do this (403): ask the district administrator",
    404: "nothing answers at this address on the district (404): check the district URL in Settings",
    413: "the district refused the sample as too large (413): its administrator must raise the size limit",
}


@dataclass
class Link:
    url: str  # DICOMweb root, no trailing slash
    username: str = ""
    password: str = ""
    ca_file: str = ""
    timeout: float = 30.0

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        if self.username:
            self.session.auth = (self.username, self.password)
        self.session.verify = self.ca_file or True
        self.session.headers["User-Agent"] = "leukoscope-box"

    @classmethod
    def from_config(cls, d) -> "Link":
        return cls(d.url, d.username, d.password, d.ca_file, float(d.timeout_s))

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.exceptions.SSLError as exc:
            raise Refused(f"the secure (TLS) connection to the district failed: {_short(exc)}; check the address "
                          "and the certificate file in Settings") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise LinkDown(f"no link to the district: {_short(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise Refused(f"the district address cannot be used: {_short(exc)}") from None
        if r.status_code >= 400:
            words = STATUS_WORDS.get(r.status_code)
            if words is None:
                words = (f"the district's server failed ({r.status_code}); the box will try again"
                         if r.status_code >= 500 else f"the district refused the request ({r.status_code})")
            raise Refused(words)
        return r

    # -- STOW-RS -------------------------------------------------------------------------------------
    def store(self, parts: list[bytes], expected_uids: list[str]) -> dict:
        """Post every object of one sample in one request; succeeds only if the district says it holds
        exactly these instances (a reply naming another object is refused: never marked as sent)."""
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for p in parts:
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(p)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        r = self._request("POST", "/studies", data=body.getvalue(), headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json"})
        try:
            reply = r.json()
        except ValueError:
            raise Refused(f"the district's answer to a store is not DICOM JSON ({r.headers.get('Content-Type')})") \
                from None
        failed = _uids(reply, STOW_FAILED_TAG)
        stored = _uids(reply, STOW_OK_TAG)
        if failed:
            raise Refused(f"the district refused {len(failed)} of {len(parts)} object(s) of this sample")
        foreign = sorted(set(stored) - set(expected_uids))
        if foreign:
            raise Refused(f"the district's answer names object(s) this box did not send ({foreign[0]}): "
                          "not counted as sent")
        missing = sorted(set(expected_uids) - set(stored))
        if missing:
            raise Refused(f"the district did not confirm {len(missing)} object(s) of this sample")
        return reply

    # -- QIDO-RS / WADO-RS ----------------------------------------------------------------------------
    def search(self, path: str, params: dict | None = None) -> list[dict]:
        from urllib.parse import quote, urlencode

        # spaces as %20: Orthanc does not read "+" in a query as a space
        query = urlencode(params or {}, quote_via=quote)
        r = self._request("GET", path + ("?" + query if query else ""), headers={"Accept": "application/dicom+json"})
        if r.status_code == 204 or not r.content:
            return []
        try:
            out = r.json()
        except ValueError:
            raise Refused("the district's search answer is not DICOM JSON") from None
        if not isinstance(out, list):
            raise Refused("the district's search answer is not a list")
        return out

    def retrieve(self, study: str, series: str, instance: str):
        """One instance, read with pydicom (parts carry no DICM preamble: read with force)."""
        import pydicom

        r = self._request("GET", f"/studies/{study}/series/{series}/instances/{instance}",
                          headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        parts = multipart_parts(r.content, r.headers.get("Content-Type", ""))
        if not parts:
            raise Refused("the district returned no object")
        return pydicom.dcmread(io.BytesIO(parts[0]), force=True)

    def check(self) -> str:
        """"Test the link": a search the box's account must be allowed to make. Returns a sentence."""
        self.search("/studies", {"limit": "1"})
        return "the district answered and accepted this box's account"


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    b = None
    for item in content_type.split(";"):
        k, _, v = item.strip().partition("=")
        if k.lower() == "boundary":
            b = v.strip('"')
    if not b:
        raise Refused(f"the district's answer is not multipart ({content_type[:60]})")
    out = []
    for chunk in body.split(b"--" + b.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if sep:
            out.append(data[:-2] if data.endswith(b"\r\n") else data)
    return out


def tag_value(item: dict, tag: str, default=None):
    v = item.get(tag, {}).get("Value")
    if not v:
        return default
    v = v[0]
    if isinstance(v, dict) and "Alphabetic" in v:
        return v["Alphabetic"]
    return v


def _uids(reply, tag: str) -> list[str]:
    seq = reply.get(tag, {}).get("Value", []) if isinstance(reply, dict) else []
    return [str(tag_value(item, SOP_UID_TAG, "")) for item in seq if isinstance(item, dict)]


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:160] or type(exc).__name__


def _json(x) -> str:
    return json.dumps(x)[:200]
