//! `streambus.v1.Bus`: the session stream (`Connect`, see [`super::connect`]) and the
//! three conveniences, `Publish` (unary), `Subscribe` (server streaming) and
//! `PublishStream` (client streaming).
//!
//! `Subscribe` answers only once its subscription is in place: the response headers,
//! which carry [`SUBSCRIPTION_ID_HEADER`], are that signal. A client that has them (in
//! tonic, the call has returned; in grpc-go, `Header()` has returned) is sure to get
//! everything published after that moment, from any connection.

use std::pin::{Pin, pin};

use futures::Stream;
use streambus_core::{BusError, CloseReason, SessionHandle};

use crate::auth::Credentials;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::Context;
use super::pump;
use crate::convert;
use crate::proto::streambus::v1 as pb;

/// Response header of `Subscribe`: the subscription's id, sent once it is in place.
pub const SUBSCRIPTION_ID_HEADER: &str = "streambus-subscription-id";

/// A response stream of server frames.
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send + 'static>>;

/// The `streambus.v1.Bus` service.
#[derive(Clone)]
pub struct BusService {
    context: Context,
}

impl std::fmt::Debug for BusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusService").finish_non_exhaustive()
    }
}

impl BusService {
    pub(crate) fn new(context: Context) -> Self {
        BusService { context }
    }

    async fn publish_batch(&self, session: &SessionHandle, batch: pb::PublishBatch) -> Result<u64, Status> {
        let count = batch.messages.len() as u64;
        let messages = convert::messages(batch.messages).map_err(|e| convert::status(&e))?;
        if batch.durable {
            let ack = session
                .publish_durable(messages)
                .await
                .map_err(|e| convert::status(&e))?;
            ack.wait().await.map_err(|e| convert::status(&e))?;
        } else {
            session.publish_batch(messages).await.map_err(|e| convert::status(&e))?;
        }
        Ok(count)
    }
}

#[tonic::async_trait]
impl pb::bus_server::Bus for BusService {
    type ConnectStream = FrameStream;

    async fn connect(&self, request: Request<Streaming<pb::ClientFrame>>) -> Result<Response<FrameStream>, Status> {
        let peer = request.remote_addr();
        let credentials = self.context.credentials(&request);
        let rx = super::connect::open(self.context.clone(), peer, credentials, request.into_inner()).await?;
        Ok(Response::new(Box::pin(rx)))
    }

    async fn publish(&self, request: Request<pb::PublishBatch>) -> Result<Response<pb::PublishAck>, Status> {
        // With authentication on, each call is a session of its caller's identity (its
        // permissions and quota); otherwise calls share the bus's default session.
        let own = match self.context.auth {
            Some(_) => Some(
                self.open_session("publish", &self.context.credentials(&request))
                    .await?,
            ),
            None => None,
        };
        let batch = request.into_inner();
        let publish_id = batch.publish_id.unwrap_or(0);
        let session = match &own {
            Some(session) => session.clone(),
            None => self
                .context
                .bus
                .default_session()
                .await
                .map_err(|e| convert::status(&e))?,
        };
        let accepted = self.publish_batch(&session, batch).await;
        if let Some(session) = own {
            let _ = session.close().await;
        }
        Ok(Response::new(pb::PublishAck {
            publish_id,
            accepted: accepted?,
        }))
    }

    type SubscribeStream = FrameStream;

    async fn subscribe(&self, request: Request<pb::Subscribe>) -> Result<Response<FrameStream>, Status> {
        let credentials = self.context.credentials(&request);
        let request = request.into_inner();
        let (filter, options) = convert::subscription(&request).map_err(|e| convert::status(&e))?;
        let session = self.open_session("subscribe", &credentials).await?;
        let subscription = match session.subscribe(filter.as_str(), options).await {
            Ok(s) => s,
            Err(e) => {
                let _ = session.close().await;
                return Err(convert::status(&e));
            }
        };
        let subscription_id = subscription.id();
        let (out, rx) = self.context.outbound();
        let context = self.context.clone();
        let span = tracing::info_span!("subscribe", session = session.id().0, filter = %filter);
        tokio::spawn(
            async move {
                // A unary subscribe has no hello: every batch is of one topic.
                let framing = pump::Framing {
                    max_frame_bytes: super::max_frame_bytes(&context.limits),
                    mixed_topics: false,
                };
                let (give_up, give_up_rx) = watch::channel(false);
                let mut pump = pin!(pump::run(subscription, out.clone(), None, framing, give_up_rx));
                tokio::select! {
                    // The subscription ended on its own, the client left, or it stopped
                    // reading past the write deadline (its queue was killed).
                    _ = &mut pump => {
                        if out.is_killed() {
                            let _ = session.close_with(CloseReason::SlowConsumer).await;
                            return;
                        }
                    }
                    // Everything admitted is buffered: close (the buffer stays readable),
                    // let the pump send what it holds, then end.
                    () = context.closing() => {
                        let _ = session.close().await;
                        let undelivered = match tokio::time::timeout(context.drain_timeout(), &mut pump).await {
                            Ok(_) => 0,
                            Err(_) => {
                                let _ = give_up.send(true);
                                pump.await
                            }
                        };
                        if undelivered > 0 {
                            tracing::error!(undelivered, "drain timed out: messages buffered for this subscription were not delivered");
                            context.shutdown.count_undelivered(undelivered);
                        }
                        let _ = out.send(Err(Status::unavailable("server shutting down"))).await;
                        return;
                    }
                }
                let _ = session.close().await;
            }
            .instrument(span),
        );
        // The subscription is in the index and in every live matching topic: the
        // headers say so.
        let mut response = Response::new(Box::pin(rx) as FrameStream);
        response
            .metadata_mut()
            .insert(SUBSCRIPTION_ID_HEADER, subscription_id.0.into());
        Ok(response)
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishBatch>>,
    ) -> Result<Response<pb::PublishAck>, Status> {
        let credentials = self.context.credentials(&request);
        let mut inbound = request.into_inner();
        let session = self.open_session("publish-stream", &credentials).await?;
        let mut accepted = 0;
        let mut stopping = pin!(self.context.stopping());
        let result = loop {
            let batch = tokio::select! {
                () = &mut stopping => break Err(Status::unavailable("server shutting down")),
                batch = inbound.message() => batch,
            };
            match batch {
                Ok(Some(batch)) => match self.publish_batch(&session, batch).await {
                    Ok(n) => accepted += n,
                    Err(status) => {
                        break Err(Status::new(
                            status.code(),
                            format!("{} ({accepted} messages were accepted before)", status.message()),
                        ));
                    }
                },
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        let _ = session.close().await;
        result.map(|()| {
            Response::new(pb::PublishAck {
                publish_id: 0,
                accepted,
            })
        })
    }
}

impl BusService {
    async fn open_session(&self, name: &str, credentials: &Credentials) -> Result<SessionHandle, Status> {
        let options = self.context.connect_options(name, credentials).await?;
        self.context
            .bus
            .connect(options)
            .await
            .map_err(|e: BusError| convert::status(&e))
    }
}
