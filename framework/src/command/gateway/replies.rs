//! The gateway's reply consumer and the decoding of a reply into an outcome.

use super::*;

pub(super) fn outcome<A: Aggregate>(
    reply: ReplyWire,
    aggregate_id: &AggregateId,
) -> Result<CommandOutcome<A>, GatewayError> {
    let command_id = reply.command_id;
    let bad = |reason: String| GatewayError::BadReply {
        command_id: command_id.clone(),
        reason,
    };
    match reply.outcome {
        OutcomeWire::Accepted { version, events } => {
            let codec = EventCodec::<A::Event>::new();
            let events = events
                .into_iter()
                .map(|e| {
                    Ok(EventEnvelope {
                        id: e.id,
                        aggregate_id: aggregate_id.clone(),
                        sequence: e.sequence,
                        time: e.time,
                        metadata: Metadata {
                            causation_id: Some(command_id.clone()),
                            ..Metadata::default()
                        },
                        event: codec
                            .decode_payload(&e.ce_type, e.data)
                            .map_err(|e| bad(e.to_string()))?,
                    })
                })
                .collect::<Result<Vec<_>, GatewayError>>()?;
            Ok(CommandOutcome::Accepted { version, events })
        }
        OutcomeWire::Rejected { error } => serde_json::from_value(error)
            .map(CommandOutcome::Rejected)
            .map_err(|e| bad(format!("the domain error does not deserialize: {e}"))),
        OutcomeWire::Failed { reason } => Err(GatewayError::Failed { command_id, reason }),
        OutcomeWire::Unavailable { partition, reason } => Err(GatewayError::PartitionUnavailable {
            command_id,
            partition,
            reason,
        }),
    }
}

pub(super) async fn listen(consumer: StreamConsumer, pending: Arc<Pending>) {
    let take = |id: &str| {
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    };
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let payload = message.payload().unwrap_or_default();
                match serde_json::from_slice::<ReplyWire>(payload) {
                    Ok(reply) => {
                        if let Some(waiter) = take(&reply.command_id) {
                            let _ = waiter.send(Ok(Delivered::Read(reply)));
                        }
                    }
                    // The key is the command id: tell its sender now rather than let
                    // it time out.
                    Err(error) => match message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(&take)
                    {
                        Some(waiter) => {
                            warn!(%error, offset = message.offset(), "unreadable reply");
                            let _ = waiter.send(Err(format!(
                                "reply at offset {} of partition {} is not a Tributary reply: {error}",
                                message.offset(),
                                message.partition()
                            )));
                        }
                        None => debug!(%error, "ignoring an unreadable reply nobody waits for"),
                    },
                }
            }
            Err(error) => {
                warn!(%error, "reply consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
