"""An SMTP sink for the notification tests, built on aiosmtpd (PyPI), not on our code.

Usage: smtp_sink.py PORT USER PASSWORD. Listens on 127.0.0.1:PORT, requires AUTH (PLAIN or
LOGIN, allowed without TLS because it is loopback) with USER/PASSWORD, refuses any recipient
at bounce.example with a permanent 550, and prints one JSON line per accepted message on
stdout: the envelope, the authenticated login, and the subject, body and headers as Python's
own mail parser reads them. Runs until stdin closes.
"""
import email
import warnings
import email.policy
import json
import logging
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# AUTH without TLS is what we mean to allow on loopback; say nothing about it.
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

port, user, password = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3].encode()
logins = []


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (user, password)
    print(json.dumps({"auth": mechanism, "login": auth_data.login.decode(), "ok": ok}), flush=True)
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode() if ok else None)


class Sink:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@bounce.example"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        print(
            json.dumps(
                {
                    "from": envelope.mail_from,
                    "to": envelope.rcpt_tos,
                    "login": session.auth_data,
                    "subject": str(msg["subject"]),
                    "header_from": str(msg["from"]),
                    "header_to": str(msg["to"]),
                    "content_type": msg.get_content_type(),
                    "body": msg.get_content(),
                }
            ),
            flush=True,
        )
        return "250 2.0.0 queued"


controller = Controller(
    Sink(),
    hostname="127.0.0.1",
    port=port,
    authenticator=authenticator,
    auth_required=True,
    auth_require_tls=False,
)
controller.start()
print(json.dumps({"ready": port}), flush=True)
sys.stdin.read()
controller.stop()
