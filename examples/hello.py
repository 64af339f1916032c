"""The example app `sluicegate dev` runs: a 3-step greeting.

Send it an event:  curl -X POST localhost:8288/e/dev -d '{"name": "demo/hello", "data": {"name": "Ada"}}'
"""

from sluicegate.sdk import Retries, Sluicegate

sg = Sluicegate(app_id="example-app")


@sg.function(id="hello", trigger="demo/hello", retries=Retries(attempts=3, backoff_ms=[1000, 2000], jitter_ms=0))
def hello(ctx, step):
    name = step.run("read-name", lambda: ctx.event["data"].get("name", "world"))
    greeting = step.run("greet", lambda: f"Hello, {name}!")
    length = step.run("measure", lambda: len(greeting))
    return {"greeting": greeting, "length": length}
