//! Which session ends come from a platform message the MQTT client cannot read (see the
//! module doc of [`super`]): rumqttc 0.25 reports a packet over its incoming limit, a
//! malformed packet and a reset socket all as codec errors, and only the first two are the
//! message's doing.

use rumqttc::{ConnectionError, StateError};

/// Whether a codec error means a packet from the broker could not be read, as opposed to a
/// broken connection (rumqttc reports socket errors through its codec too) or a packet of
/// ours the client would not send.
pub(super) fn unreadable(e: &rumqttc::mqttbytes::Error) -> bool {
    use rumqttc::mqttbytes::Error as E;
    !matches!(
        e,
        E::Io(_) | E::OutgoingPacketTooLarge { .. } | E::InsufficientBytes(_)
    )
}

/// Why a session ended, in words; a packet over the client's limit says which limit.
pub(super) fn unreadable_reason(e: &ConnectionError, limit: usize) -> String {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => format!(
            "incoming packet of {n} bytes is over uplink.max_incoming_kib ({} KiB)",
            limit / 1024
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_packets_from_the_broker_that_cannot_be_read_are_unreadable() {
        use rumqttc::mqttbytes::Error as E;
        assert!(unreadable(&E::PayloadSizeLimitExceeded(17 << 20)));
        assert!(unreadable(&E::MalformedPacket));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(
            !unreadable(&E::Io(reset)),
            "a reset connection is the peer's doing"
        );
        assert!(!unreadable(&E::OutgoingPacketTooLarge {
            pkt_size: 2,
            max: 1
        }));
        let e = ConnectionError::MqttState(StateError::Deserialization(
            E::PayloadSizeLimitExceeded(17 << 20),
        ));
        assert!(unreadable_reason(&e, 16 << 20).contains("max_incoming_kib (16384 KiB)"));
    }
}
