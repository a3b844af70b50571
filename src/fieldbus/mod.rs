//! Field devices: the barcode scanner reader, the sorter PLC link and the X-ray scanners'
//! verdict readers.
//!
//! Each device is owned by one task that reconnects with backoff and reports its link state
//! to [`crate::metrics::Metrics`]. Modbus keeps "the device refused" (an exception code) apart
//! from "the link failed" (I/O, timeout): the first leaves the link up, the second drops it.

pub mod handshake;
pub mod plc;
pub mod scanner;
pub mod xray;

use std::time::Duration;

use tokio_modbus::client::Context;
use tokio_modbus::Slave;
use tokio_serial::SerialStream;

use crate::config::{Parity, SerialSettings, Transport};

/// Why a device's transport could not be opened: no TCP connection, or no serial port.
/// A device that answers but refuses is a Modbus exception, reported by the caller apart.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("TCP connect: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("serial port: {0}")]
    Serial(#[source] tokio_serial::Error),
}

/// Opens a Modbus device's transport and attaches a client for `unit` to it: the PLC link
/// and the X-ray verdict readers open their devices the same way.
pub async fn attach(
    transport: &Transport,
    unit: u8,
    timeout: Duration,
) -> Result<Context, OpenError> {
    match transport {
        Transport::Tcp { host, port } => {
            let stream = connect_tcp(host, *port, timeout)
                .await
                .map_err(OpenError::Tcp)?;
            Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)))
        }
        Transport::Serial(s) => {
            let port = open_serial(s).map_err(OpenError::Serial)?;
            Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(unit)))
        }
    }
}

/// Opens a serial port (or pseudo-terminal) with the configured line settings.
pub fn open_serial(s: &SerialSettings) -> Result<SerialStream, tokio_serial::Error> {
    use tokio_serial::SerialPortBuilderExt;
    let data_bits = match s.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if s.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&s.path, s.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .timeout(Duration::from_millis(100))
        .open_native_async()
}

/// Connects a TCP stream with a timeout and Nagle off (divert commands are tiny and urgent).
pub async fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
