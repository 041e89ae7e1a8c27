"""A receiver of ae_events webhooks that checks every request's Standard Webhooks signature
before it trusts the body (docs/receivers.md). Python 3.10+, PyPI's standardwebhooks:

    pip install standardwebhooks==1.3.0
    WEBHOOK_SECRET=whsec_... PORT=8000 python3 verify.py

Answers 204 to a verified request and 400 to any other, and prints one line per request.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The endpoint's secret as create_endpoint (or rotate_endpoint_secret) returned it.
webhook = Webhook(os.environ["WEBHOOK_SECRET"])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        # The body's bytes exactly as received: the signature covers them, not a re-encoding.
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            # Checks webhook-id, webhook-timestamp (within 5 minutes) and webhook-signature
            # (one of its space-separated v1 signatures), then parses the JSON.
            payload = webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as error:
            print("refused", self.headers.get("webhook-id"), error, flush=True)
            self.send_response(400)
            self.end_headers()
            return
        # webhook-id is the same on every retry and redelivery: de-duplicate on it.
        webhook_id = self.headers["webhook-id"]
        key = self.headers["ae-subscription-key"]  # ae.test_instance.created / .updated
        test = self.headers.get("ae-test") == "true"  # sent by ae_events.send_test_event
        print("verified", webhook_id, key, "test" if test else "event",
              "instance", payload["id"], flush=True)
        # Answer quickly (2xx = delivered); do slow work after, or in a queue.
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))),
                    Receiver).serve_forever()
