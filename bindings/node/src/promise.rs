//! JavaScript promises settled by futures that run on the core's tokio runtime: the binding starts no
//! runtime of its own, and nothing here blocks the JavaScript thread.

use std::future::Future;

use napi::bindgen_prelude::{JsValue, PromiseRaw, ToNapiValue};
use napi::Env;

type Resolver<R> = Box<dyn FnOnce(Env) -> napi::Result<R> + Send>;

/// Runs `future` on the core runtime and returns a promise that resolves with `convert(value)` (built
/// on the JavaScript thread) or rejects with the mapped error.
pub(crate) fn spawn_promise<'env, T, R, F, C>(
    env: &'env Env,
    future: F,
    convert: C,
) -> napi::Result<PromiseRaw<'env, R>>
where
    T: Send + 'static,
    R: ToNapiValue + 'static,
    F: Future<Output = harmonylite::Result<T>> + Send + 'static,
    C: FnOnce(T) -> R + Send + 'static,
{
    let (deferred, promise) = env.create_deferred::<R, Resolver<R>>()?;
    harmonylite::runtime().spawn(async move {
        let outcome = future.await;
        deferred.resolve(Box::new(move |env: Env| match outcome {
            Ok(value) => Ok(convert(value)),
            Err(err) => Err(crate::error::to_js(&env, &err)),
        }));
    });
    Ok(PromiseRaw::new(env.raw(), promise.raw()))
}

/// A promise already rejected with `err` (an argument was invalid): methods that return promises
/// report every failure through the promise.
pub(crate) fn rejected<'env, R: ToNapiValue + 'static>(
    env: &'env Env,
    err: harmonylite::Error,
) -> napi::Result<PromiseRaw<'env, R>> {
    spawn_promise(
        env,
        async move { Err::<std::convert::Infallible, _>(err) },
        |never| match never {},
    )
}
