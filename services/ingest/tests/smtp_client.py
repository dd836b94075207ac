#!/usr/bin/env python3
"""A real SMTP client (Python's smtplib) for the ingest tests.

Sends each --file as one message and prints one JSON object:
  {"ehlo": [...extensions...], "tls": bool, "results": [{"file", "ok", "code", "message", "refused"}]}
"""
import argparse
import json
import smtplib
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--sender", default="alice@example.org")
    ap.add_argument("--to", action="append", required=True)
    ap.add_argument("--file", action="append", required=True)
    args = ap.parse_args()

    out = {"ehlo": [], "tls": False, "results": []}
    with smtplib.SMTP(args.host, args.port, timeout=60) as s:
        s.ehlo("client.example.org")
        if args.starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.example.org")
            out["tls"] = True
        out["ehlo"] = sorted(s.esmtp_features.keys())
        for path in args.file:
            with open(path, "rb") as f:
                data = f.read()
            r = {"file": path, "ok": False, "code": None, "message": None, "refused": {}}
            try:
                refused = s.sendmail(args.sender, args.to, data)
                r["ok"] = True
                r["code"] = 250
                r["refused"] = {k: v[0] for k, v in refused.items()}
            except smtplib.SMTPRecipientsRefused as e:
                r["refused"] = {k: v[0] for k, v in e.recipients.items()}
                r["code"] = min(r["refused"].values()) if r["refused"] else None
            except smtplib.SMTPSenderRefused as e:
                r["code"], r["message"] = e.smtp_code, e.smtp_error.decode(errors="replace")
            except smtplib.SMTPDataError as e:
                r["code"], r["message"] = e.smtp_code, e.smtp_error.decode(errors="replace")
            except smtplib.SMTPResponseException as e:
                r["code"], r["message"] = e.smtp_code, e.smtp_error.decode(errors="replace")
            out["results"].append(r)
            try:
                s.rset()
            except smtplib.SMTPException:
                pass
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
