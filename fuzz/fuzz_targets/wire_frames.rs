//! Any bytes as a client frame and as a server frame: decoding and the conversion to
//! the bus's own types either succeed or fail with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use streambus::convert;
use streambus::proto::streambus::v1 as pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = pb::ClientFrame::decode(data) {
        match frame.frame {
            Some(pb::client_frame::Frame::Publish(batch)) => {
                if let Ok(messages) = convert::messages(batch.messages) {
                    for m in messages {
                        let topic = m.topic.clone();
                        let wire = convert::publish_message(m);
                        assert_eq!(wire.topic, topic.as_str());
                    }
                }
            }
            Some(pb::client_frame::Frame::Subscribe(s)) => {
                let _ = convert::subscription(&s);
            }
            _ => {}
        }
    }
    if let Ok(frame) = pb::ServerFrame::decode(data) {
        match frame.frame {
            Some(pb::server_frame::Frame::Deliveries(batch)) => {
                let _ = convert::deliveries_from_wire(batch);
            }
            Some(pb::server_frame::Frame::Gap(gap)) => {
                let _ = convert::gap_from_wire(gap);
            }
            Some(pb::server_frame::Frame::SubscriptionClosed(c)) => {
                let _ = convert::close_reason_from_wire(c.reason);
            }
            _ => {}
        }
    }
});
