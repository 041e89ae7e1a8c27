"""An alert endpoint for ae_events' operational events (docs/alerts.md) that posts one line per
event to a chat service's incoming webhook (Slack, Mattermost, Rocket.Chat and Google Chat take
{"text": ...}). Python 3.10+, PyPI's standardwebhooks:

    pip install standardwebhooks==1.3.0
    WEBHOOK_SECRET=whsec_... CHAT_WEBHOOK_URL=https://hooks.slack.com/services/... \
        PORT=8000 python3 chat_adapter.py

It verifies each request's signature, posts the line and answers 204 once the chat took it, 502
when the chat did not (the relay retries it then), 400 to a request that is not signed.
"""
import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
chat_url = os.environ["CHAT_WEBHOOK_URL"]


def line(key, event):
    """The chat message of one operational event (the fields are in docs/schemas/<key>.json)."""
    where = f"{event['endpoint']} ({event['url']})"
    why = f"{event['reason']}; last status {event['last_status']}: {event['last_error']}"
    if key == "ae.endpoint.failing":
        return f":red_circle: {where} is failing since {event['failing_since']}: {why}; {event['backlog']} waiting"
    if key == "ae.endpoint.recovered":
        return f":large_green_circle: {where} delivers again after {event['failing_seconds']:.0f} s; {event['backlog']} waiting"
    if key == "ae.endpoint.disabled":
        return f":no_entry: {where} was disabled ({event['cause']}): {why}; {event['backlog']} waiting"
    if key == "ae.delivery.dead_lettered":
        return (f":warning: {where} dead-lettered event {event['event_id']} ({event['subscription_key']}, "
                f"instance {event['instance_id']}) after {event['attempts']} attempts: {why}")
    return f"{key}: {json.dumps(event)}"


class Adapter(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            event = webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError:
            self.send_response(400)
            self.end_headers()
            return
        text = line(self.headers["ae-subscription-key"], event)
        request = urllib.request.Request(chat_url, data=json.dumps({"text": text}).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
            status = 204
        except OSError as error:  # the chat refused it or is unreachable: retried by the relay
            print("chat failed", self.headers.get("webhook-id"), error, flush=True)
            status = 502
        self.send_response(status)
        self.end_headers()

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))),
                    Adapter).serve_forever()
