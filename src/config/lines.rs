//! `[devices]` and `[[lines]]`: each device's transport and profile, checked once and used by
//! name from the lines; each line's scanner, PLC and X-ray scanner, lanes and geometry. A
//! device serves one line; only X-ray scanners may share a serial port, with the same
//! settings, because the divert path must never queue behind another device's request.

use std::collections::{BTreeMap, BTreeSet};

use bondline_devices::{ProfileKind, Profiles};

use super::{
    bad, check_ident, check_serial, geometry, lane_map, parse_host_port, xray_geometry, Bad, Line,
    PlcDevice, RawDevice, RawLine, ScannerDevice, SerialSettings, Transport, XrayDevice,
};

/// Checks the devices and the lines that use them, and resolves the lines.
pub(super) fn resolve(
    devices: &BTreeMap<String, RawDevice>,
    raw_lines: &[RawLine],
    profiles: &Profiles,
) -> Result<Vec<Line>, Bad> {
    // Devices: transport and profile, checked once, used by name from lines.
    let mut transports = BTreeMap::new();
    for (name, d) in devices {
        let key = format!("devices.{name}");
        check_ident(name).map_err(|r| bad(&key, r))?;
        let transport = match (&d.tcp, &d.serial) {
            (Some(addr), None) => {
                let (host, port) =
                    parse_host_port(addr).map_err(|r| bad(&format!("{key}.tcp"), r))?;
                Transport::Tcp { host, port }
            }
            (None, Some(s)) => Transport::Serial(
                check_serial(s).map_err(|(k, r)| bad(&format!("{key}.serial.{k}"), r))?,
            ),
            _ => return Err(bad(
                &key,
                "give exactly one transport: `tcp = \"host:port\"` or `serial = { path, baud }`"
                    .into(),
            )),
        };
        let Some(profile) = profiles.get(&d.profile) else {
            return Err(bad(
                &format!("{key}.profile"),
                format!(
                    "no profile named `{}`; known: {}",
                    d.profile,
                    profiles.names().join(", ")
                ),
            ));
        };
        transports.insert(name.clone(), (transport, profile.clone()));
    }

    if raw_lines.is_empty() {
        return Err(bad("lines", "at least one line is needed".into()));
    }
    let mut lines = Vec::new();
    let mut line_ids = BTreeSet::new();
    let mut used = BTreeMap::new();
    for (i, l) in raw_lines.iter().enumerate() {
        let key = format!("lines[{i}]");
        check_ident(&l.id).map_err(|r| bad(&format!("{key}.id"), r))?;
        if !line_ids.insert(l.id.clone()) {
            return Err(bad(
                &format!("{key}.id"),
                format!("line `{}` is defined twice", l.id),
            ));
        }
        for dev in [&l.scanner, &l.plc].into_iter().chain(l.xray.as_ref()) {
            if let Some(other) = used.insert(dev.clone(), l.id.clone()) {
                return Err(bad(
                    &key,
                    format!("device `{dev}` is already used by line `{other}`"),
                ));
            }
        }
        let lookup = |field: &str, name: &str| {
            transports.get(name).ok_or_else(|| {
                bad(
                    &format!("{key}.{field}"),
                    format!("no device named `{name}` under [devices]"),
                )
            })
        };
        let (s_transport, s_profile) = lookup("scanner", &l.scanner)?;
        let ProfileKind::Scanner(framing) = &s_profile.kind else {
            return Err(bad(
                &format!("{key}.scanner"),
                format!(
                    "device `{}` has profile `{}`, which is a {} profile, not a scanner",
                    l.scanner,
                    s_profile.name,
                    s_profile.kind_name()
                ),
            ));
        };
        let (p_transport, p_profile) = lookup("plc", &l.plc)?;
        let ProfileKind::Plc(map) = &p_profile.kind else {
            return Err(bad(
                &format!("{key}.plc"),
                format!(
                    "device `{}` has profile `{}`, which is a {} profile, not a PLC",
                    l.plc,
                    p_profile.name,
                    p_profile.kind_name()
                ),
            ));
        };
        let mut map = map.clone();
        let dev = &devices[&l.plc];
        if let Some(unit) = dev.unit_id {
            map.unit_id = unit;
        }
        if let Some(t) = dev.timeout_ms {
            if !(1..=10_000).contains(&t) {
                return Err(bad(
                    &format!("devices.{}.timeout_ms", l.plc),
                    "must be 1 to 10000".into(),
                ));
            }
            map.timeout_ms = t;
        }
        let lanes = lane_map(&l.lanes).map_err(|(k, r)| bad(&format!("{key}.lanes{k}"), r))?;
        let geometry =
            geometry(&l.geometry).map_err(|(k, r)| bad(&format!("{key}.geometry.{k}"), r))?;
        let xray = match &l.xray {
            None => None,
            Some(name) => {
                let (transport, profile) = lookup("xray", name)?;
                let ProfileKind::Xray(map) = &profile.kind else {
                    return Err(bad(
                        &format!("{key}.xray"),
                        format!(
                            "device `{name}` has profile `{}`, which is a {} profile, not an X-ray scanner",
                            profile.name,
                            profile.kind_name()
                        ),
                    ));
                };
                let mut map = map.clone();
                let dev = &devices[name];
                if let Some(unit) = dev.unit_id {
                    map.unit_id = unit;
                }
                if let Some(t) = dev.timeout_ms {
                    if !(1..=10_000).contains(&t) {
                        return Err(bad(
                            &format!("devices.{name}.timeout_ms"),
                            "must be 1 to 10000".into(),
                        ));
                    }
                    map.timeout_ms = t;
                }
                let join = xray_geometry(&l.geometry)
                    .map_err(|(k, r)| bad(&format!("{key}.geometry.{k}"), r))?;
                Some((
                    XrayDevice {
                        name: name.clone(),
                        transport: transport.clone(),
                        map,
                        spool: dev.spool.clone(),
                    },
                    join,
                ))
            }
        };
        lines.push(Line {
            id: l.id.clone(),
            scanner: ScannerDevice {
                name: l.scanner.clone(),
                transport: s_transport.clone(),
                framing: framing.clone(),
            },
            plc: PlcDevice {
                name: l.plc.clone(),
                transport: p_transport.clone(),
                map,
            },
            xray,
            lanes,
            geometry,
        });
    }
    for (name, d) in devices {
        if d.spool.is_some() && !matches!(transports[name].1.kind, ProfileKind::Xray(_)) {
            return Err(bad(
                &format!("devices.{name}.spool"),
                "only an X-ray scanner has an image spool".into(),
            ));
        }
    }
    // X-ray scanners may share an RS-485 port, taking turns on it, if they agree on how
    // it is set up. The scanner and the PLC each own their port: the divert path must
    // never queue behind another device's request.
    let mut ports: BTreeMap<&str, Vec<(&str, bool, &SerialSettings)>> = BTreeMap::new();
    for l in &lines {
        let users = [
            (&l.scanner.name, false, &l.scanner.transport),
            (&l.plc.name, false, &l.plc.transport),
        ]
        .into_iter()
        .chain(l.xray.as_ref().map(|(x, _)| (&x.name, true, &x.transport)));
        for (name, xray, t) in users {
            if let Transport::Serial(s) = t {
                ports
                    .entry(s.path.as_str())
                    .or_default()
                    .push((name.as_str(), xray, s));
            }
        }
    }
    for (path, users) in &ports {
        let Some(((first, _, settings), rest)) = users.split_first() else {
            continue;
        };
        for (name, xray, s) in rest {
            if !xray || !users[0].1 {
                return Err(bad(
                    &format!("devices.{name}.serial.path"),
                    format!(
                        "{path} is already used by `{first}`; only X-ray scanners share a port"
                    ),
                ));
            }
            if s != settings {
                return Err(bad(
                    &format!("devices.{name}.serial"),
                    format!("shares {path} with `{first}` but with other settings; devices on one RS-485 port use the same settings"),
                ));
            }
        }
    }
    Ok(lines)
}
