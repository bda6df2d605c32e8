//! What a decrypted packet may do: the gateway is an endpoint, not a router.

use std::net::Ipv4Addr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};

/// The fate of one decrypted packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// TCP from the peer's own address to ours, on a served port.
    Deliver,
    /// The source is not the peer's tunnel address (spoofing, or a misconfigured client).
    DropWrongSource,
    /// Anything but TCP to our address and ports: other hosts, other ports, ICMP, UDP, IPv6.
    DropWrongDestination,
    /// Not a well-formed, unfragmented IPv4 packet.
    DropMalformed,
}

/// Judges one decrypted packet from the peer whose tunnel address is `peer_ip`.
pub(crate) fn inspect(packet: &[u8], peer_ip: Ipv4Addr, own: Ipv4Addr, ports: &[u16]) -> Verdict {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {}
        Some(6) => return Verdict::DropWrongDestination,
        _ => return Verdict::DropMalformed,
    }
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return Verdict::DropMalformed;
    };
    if ip.src_addr() != peer_ip {
        return Verdict::DropWrongSource;
    }
    if ip.dst_addr() != own || ip.next_header() != IpProtocol::Tcp {
        return Verdict::DropWrongDestination;
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Verdict::DropMalformed;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return Verdict::DropMalformed;
    };
    if ports.contains(&tcp.dst_port()) {
        Verdict::Deliver
    } else {
        Verdict::DropWrongDestination
    }
}

/// The IPv4 destination of an outgoing packet (smoltcp only emits IPv4 here).
pub(crate) fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    (packet.first()? >> 4 == 4).then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    /// A minimal IPv4 + TCP SYN (checksums are not the filter's business).
    fn packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..22].copy_from_slice(&50000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x02;
        p
    }

    #[test]
    fn only_tcp_from_the_peer_to_our_port_is_delivered() {
        let tcp = 6;
        let cases = [
            (packet(PEER, OWN, tcp, 443), Verdict::Deliver),
            (
                packet(Ipv4Addr::new(10, 77, 0, 3), OWN, tcp, 443),
                Verdict::DropWrongSource,
            ),
            (
                packet(PEER, Ipv4Addr::new(192, 168, 1, 10), tcp, 443),
                Verdict::DropWrongDestination,
            ),
            (packet(PEER, OWN, tcp, 22), Verdict::DropWrongDestination),
            (packet(PEER, OWN, 17, 443), Verdict::DropWrongDestination),
            (packet(PEER, OWN, 1, 0), Verdict::DropWrongDestination),
        ];
        for (p, want) in cases {
            assert_eq!(inspect(&p, PEER, OWN, &[443]), want);
        }
    }

    #[test]
    fn fragments_truncations_and_garbage_are_malformed() {
        let mut frag = packet(PEER, OWN, 6, 443);
        frag[6] = 0x20; // more fragments
        assert_eq!(inspect(&frag, PEER, OWN, &[443]), Verdict::DropMalformed);
        let whole = packet(PEER, OWN, 6, 443);
        for len in 0..whole.len() {
            assert_ne!(inspect(&whole[..len], PEER, OWN, &[443]), Verdict::Deliver);
        }
        assert_eq!(
            inspect(&[0xff; 60], PEER, OWN, &[443]),
            Verdict::DropMalformed
        );
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        assert_eq!(
            inspect(&v6, PEER, OWN, &[443]),
            Verdict::DropWrongDestination
        );
    }

    #[test]
    fn destination_reads_the_ipv4_header() {
        assert_eq!(destination(&packet(OWN, PEER, 6, 1)), Some(PEER));
        assert_eq!(destination(&[0x45; 10]), None);
    }
}
