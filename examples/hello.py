"""The example app `sluicegate dev` runs: a 3-step greeting, and an onboarding flow with
durable steps (sleep, wait for an event, parallel steps, cancel on an event).

Send it events:
  curl -X POST localhost:8288/e/dev -d '{"name": "demo/hello", "data": {"name": "Ada"}}'
  curl -X POST localhost:8288/e/dev -d '{"name": "demo/signup", "data": {"user": "ada"}}'
  curl -X POST localhost:8288/e/dev -d '{"name": "demo/verified", "data": {"user": "ada"}}'
"""

from sluicegate.sdk import Cancel, Retries, Sluicegate

sg = Sluicegate(app_id="example-app")


@sg.function(id="hello", trigger="demo/hello", retries=Retries(attempts=3, backoff_ms=[1000, 2000], jitter_ms=0))
def hello(ctx, step):
    name = step.run("read-name", lambda: ctx.event["data"].get("name", "world"))
    greeting = step.run("greet", lambda: f"Hello, {name}!")
    length = step.run("measure", lambda: len(greeting))
    return {"greeting": greeting, "length": length}


@sg.function(id="onboarding", trigger="demo/signup", cancel_on=[Cancel(event="demo/deleted", match="data.user")])
def onboarding(ctx, step):
    user = ctx.event["data"].get("user", "someone")
    step.sleep("settle", "1s")  # no worker waits: a durable timer resumes the run
    verified = step.wait_for_event("verified", event="demo/verified", match="data.user", timeout="5m")
    profile, crm = step.parallel([lambda: step.run("profile", lambda: f"profile of {user}"),
                                  lambda: step.run("crm", lambda: f"crm record of {user}")])
    return {"user": user, "verified": verified is not None, "synced": [profile, crm]}
