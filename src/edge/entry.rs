//! The Worker's entry points: one fetch handler, straight to the route table, and the cron
//! trigger that keeps the price book fresh.

use worker::{event, Context, Env, Result, ScheduleContext, ScheduledEvent};

/// Takes the runtime's request and answers with a runtime response: workers-rs's
/// conversions both ways cost a metered call more than they give it (`edge::incoming`).
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> Result<web_sys::Response> {
    crate::edge::routes::handle(req, env, ctx).await
}

/// The cron trigger (`[triggers]` in wrangler.toml): refreshes the live price book from the
/// upstream's `/v1/models`, so calls find a fresh one in KV.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let Ok(s) = crate::edge::config::settings(&env) else {
        crate::edge::platform::fault("scheduled: the price book was not refreshed", "settings are invalid");
        return;
    };
    if let Err(e) = crate::edge::prices::refresh(&env, &s).await {
        crate::edge::platform::fault("scheduled: the price book was not refreshed", &e.to_string());
    }
}
