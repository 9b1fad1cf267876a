"""``leukoscope district``: the district review page. With no arguments: against an Orthanc on loopback
(http://127.0.0.1:8042/dicom-web), the page on http://127.0.0.1:8090/."""
from __future__ import annotations

import getpass
import os
from pathlib import Path


def default_data_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/leukoscope-district")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "leukoscope-district"


def register(commands) -> None:
    p = commands.top.add_parser("district", help="the district review page over the district's Orthanc (DICOMweb)")
    p.add_argument("--orthanc", default=os.environ.get("LEUKOSCOPE_ORTHANC", "http://127.0.0.1:8042/dicom-web"),
                   help="the Orthanc DICOMweb root (default: loopback, %(default)s)")
    p.add_argument("--orthanc-user", default=os.environ.get("LEUKOSCOPE_ORTHANC_USER", ""))
    p.add_argument("--orthanc-password-file", help="a file holding the Orthanc password "
                   "(or $LEUKOSCOPE_ORTHANC_PASSWORD)")
    p.add_argument("--ca-file", default="", help="a PEM file trusting Orthanc's certificate, for https")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--data-dir", type=Path, default=None, help="accounts and the session key")
    p.add_argument("--add-user", metavar="NAME", help="create an account (asks for the password) and exit")
    p.add_argument("--role", default="expert", choices=["expert", "admin"])
    p.add_argument("--export", metavar="OUT", type=Path, help="write every expert-confirmed cell as a training set "
                   "(leukoscope train reads it as kind \"district\") and exit")
    p.set_defaults(func=_run)


def _password(args) -> str:
    if args.orthanc_password_file:
        return Path(args.orthanc_password_file).read_text().strip()
    return os.environ.get("LEUKOSCOPE_ORTHANC_PASSWORD", "")


def _run(args) -> int:
    from district.accounts import Accounts

    data_dir = args.data_dir or default_data_dir()
    if args.add_user:
        pw = os.environ.get("LEUKOSCOPE_DISTRICT_NEW_PASSWORD") or getpass.getpass(f"password for {args.add_user}: ")
        Accounts(data_dir / "accounts.db").create(args.add_user, pw, args.role)
        print(f"account {args.add_user} ({args.role}) created")
        return 0
    import waitress

    from device.district.link import Link, LinkError
    from district.app import create_app

    link = Link(args.orthanc, args.orthanc_user, _password(args), args.ca_file)
    if args.export:
        from district.catalogue import Catalogue
        from district.export import export_confirmed

        done = export_confirmed(Catalogue(link), args.export)
        print(f"{done['cells']} expert-confirmed cells from {done['boxes']} box(es) written to {done['out']}")
        return 0
    try:
        link.check()
        state = "answers"
    except LinkError as exc:
        state = f"does not answer yet ({exc})"
    app = create_app(link, data_dir)
    server = waitress.create_server(app, host=args.host, port=args.port, threads=8, ident="leukoscope-district")
    print(f"Leukoscope district on http://{server.effective_host}:{server.effective_port}/ "
          f"(Orthanc {args.orthanc} {state}; data {data_dir})", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0
