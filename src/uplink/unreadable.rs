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

/// The largest packet MQTT 3.1.1 can carry (its remaining length field's maximum).
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The size of the packet that ended a session for being over the client's read limit.
pub(super) fn oversized(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// The read limit of the next session: the configured one, or, right after a session ended
/// on a packet of `oversized` bytes, large enough to read that packet once. rumqttc cannot
/// skip a packet it will not read, and the broker delivers it again on every session; read
/// once, it is refused by the gateway's own payload limit and acknowledged, so the broker
/// stops delivering it and the uplink is cut once, not in a loop. The raise lasts one
/// session and never exceeds what MQTT can carry.
pub(super) fn read_limit_after(configured: usize, oversized: Option<usize>) -> usize {
    match oversized {
        Some(n) => configured.max(n.min(MQTT_MAX_PACKET)),
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_after_an_oversized_packet_reads_it_once() {
        let configured = 16 << 20;
        assert_eq!(read_limit_after(configured, None), configured);
        assert_eq!(read_limit_after(configured, Some(17 << 20)), 17 << 20);
        assert_eq!(read_limit_after(configured, Some(1 << 30)), MQTT_MAX_PACKET);
        assert_eq!(read_limit_after(configured, Some(10)), configured);
        let e = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(17 << 20),
        ));
        assert_eq!(oversized(&e), Some(17 << 20));
        assert_eq!(oversized(&ConnectionError::NetworkTimeout), None);
    }

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
