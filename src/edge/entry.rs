//! The Worker's entry point: one fetch handler, straight to the route table.

use worker::{event, Context, Env, Request, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    crate::edge::routes::handle(req, env, ctx).await
}
