import KVM

/// Dirty pages copied out of guest RAM during the pause, with the machine state:
/// everything the encoder needs, so the guest can run on while it works.
/// Allocated once and reused (it grows only when an epoch dirties more pages
/// than any before).
public final class StagedCheckpoint: @unchecked Sendable {
    public private(set) var sequence: UInt64 = 0
    public private(set) var isFull = false
    public private(set) var pageNumbers: [UInt32] = []
    private var buffer: UnsafeMutableRawPointer
    private var capacity: Int
    /// The machine state as bytes: encoded on first use (on the encoder thread,
    /// after the guest resumed), from what was captured during the pause.
    public var state: [UInt8] {
        if let encode = pendingState {
            encodedState = encode()
            pendingState = nil
        }
        return encodedState
    }
    private var encodedState: [UInt8] = []
    private var pendingState: (@Sendable () -> [UInt8])?
    /// The epoch's external output (`OutputRecord` bytes).
    public private(set) var output: [UInt8] = []
    /// The epoch's block writes (`DiskRecord` bytes).
    public private(set) var disk: [UInt8] = []

    public init(initialCapacityPages: Int = 1024) {
        capacity = max(1, initialCapacityPages)
        buffer = .allocate(byteCount: capacity * pageSize, alignment: 64)
        pageNumbers.reserveCapacity(capacity)
    }

    deinit { buffer.deallocate() }

    public var count: Int { pageNumbers.count }

    /// The copied contents of the `index`-th staged page.
    public func contents(_ index: Int) -> UnsafeRawPointer { UnsafeRawPointer(buffer + index * pageSize) }

    /// `fill` and `attach` in one, with state bytes already encoded.
    func fill(sequence: UInt64, isFull: Bool, dirty: DirtyBitmap, memory: UnsafeRawPointer, state: [UInt8],
              output: [UInt8] = [], disk: [UInt8] = []) {
        fill(sequence: sequence, isFull: isFull, dirty: dirty, memory: memory)
        attach(state: { state }, output: output, disk: disk)
    }

    /// Copies the pages marked in `dirty` out of `memory`; `attach` adds the rest.
    func fill(sequence: UInt64, isFull: Bool, dirty: DirtyBitmap, memory: UnsafeRawPointer) {
        self.sequence = sequence
        self.isFull = isFull
        pageNumbers.removeAll(keepingCapacity: true)
        let needed = dirty.count
        if needed > capacity {
            buffer.deallocate()
            capacity = needed + needed / 4
            buffer = .allocate(byteCount: capacity * pageSize, alignment: 64)
        }
        var index = 0
        dirty.forEachPage { page in
            (buffer + index * pageSize).copyMemory(from: memory + page * pageSize, byteCount: pageSize)
            pageNumbers.append(UInt32(page))
            index += 1
        }
    }

    /// Records the machine state (encoded when first read), the epoch's output and its block writes.
    func attach(state: @escaping @Sendable () -> [UInt8], output: [UInt8], disk: [UInt8]) {
        pendingState = state
        encodedState = []
        self.output = output
        self.disk = disk
    }
}
