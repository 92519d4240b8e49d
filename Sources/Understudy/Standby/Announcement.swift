/// Frames a standby sends on the guest's behalf when it takes over, so that
/// switches and neighbours learn where the guest's MAC now lives: three RARP
/// frames (what QEMU's self-announce sends; no IP needed) and a gratuitous ARP
/// for each IPv4 address the guest was seen using.
public enum Announcement {
    static let broadcast: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

    /// The announcement frames for `mac` and the guest's IPv4 addresses.
    public static func frames(mac: [UInt8], addresses: [[UInt8]]) -> [[UInt8]] {
        precondition(mac.count == 6, "a MAC address is 6 bytes")
        let rarp = arp(ethertype: 0x8035, operation: 3, mac: mac, senderIP: [0, 0, 0, 0], targetMAC: mac, targetIP: [0, 0, 0, 0])
        var frames = [rarp, rarp, rarp]
        for address in addresses where address.count == 4 {
            frames.append(arp(ethertype: 0x0806, operation: 1, mac: mac, senderIP: address, targetMAC: [0, 0, 0, 0, 0, 0], targetIP: address))
        }
        return frames
    }

    static func arp(ethertype: UInt16, operation: UInt16, mac: [UInt8], senderIP: [UInt8], targetMAC: [UInt8], targetIP: [UInt8]) -> [UInt8] {
        var frame = broadcast + mac + [UInt8(ethertype >> 8), UInt8(ethertype & 0xFF)]
        frame += [0x00, 0x01, 0x08, 0x00, 6, 4, UInt8(operation >> 8), UInt8(operation & 0xFF)]
        frame += mac + senderIP + targetMAC + targetIP
        frame += [UInt8](repeating: 0, count: max(0, 60 - frame.count))
        return frame
    }

    /// The IPv4 address `frame` shows as its sender, if it is an ARP or IPv4
    /// frame from `mac` (how the standby learns the guest's addresses from the
    /// output that travels in checkpoints).
    public static func senderAddress(of frame: [UInt8], mac: [UInt8]) -> [UInt8]? {
        guard frame.count >= 34, Array(frame[6..<12]) == mac else { return nil }
        let type = UInt16(frame[12]) << 8 | UInt16(frame[13])
        switch type {
        case 0x0806 where frame.count >= 42: return Array(frame[28..<32])
        case 0x0800: return Array(frame[26..<30])
        default: return nil
        }
    }
}
