import Testing
@testable import Understudy

/// Statistics over long runs stay constant in size and constant in time per
/// epoch, and a status line reads the interval it covers, however long the run.
@Suite("Epoch statistics")
struct EpochLogTests {
    static func epoch(_ sequence: Int, pauseMicroseconds: Int, stretched: Bool = false) -> EpochStatistics {
        EpochStatistics(sequence: UInt64(sequence), pause: .microseconds(pauseMicroseconds), dirtyPages: 10, rawBytes: 40960,
                        encodedBytes: 1000, encodeTime: .microseconds(50), stretched: stretched)
    }

    /// A million epochs (over 16 minutes at 1 ms epochs): the log keeps its
    /// capacity and no more, the totals count all, the quantiles are right, and
    /// the status line of the last 10 s (what a primary reads after 100 s at
    /// 1 ms) says 1000 checkpoints/s, not 0.
    @Test func aMillionEpochsInConstantSpace() {
        var log = EpochLog(capacity: 4096)
        var readings: [EpochTotals] = []
        for i in 0..<1_000_000 {
            if i % 10_000 == 0 { readings.append(log.totals) }
            log.record(Self.epoch(i, pauseMicroseconds: 100 + i % 100, stretched: i % 1000 == 0))
        }
        #expect(log.count == 1_000_000)
        #expect(log.recent.count == 4096, "only the most recent epochs are kept whole")
        #expect(log.recent.first?.sequence == 1_000_000 - 4096 && log.recent.last?.sequence == 999_999)
        #expect(log.recent(since: 999_990).map(\.sequence) == Array(999_990..<1_000_000).map(UInt64.init))
        #expect(log.recent(since: 0).count == 4096)

        let all = log.totals
        #expect(all.epochs == 1_000_000 && all.stretched == 1000 && all.dirtyPages == 10_000_000)
        // Pauses are uniform in 100...199 µs: p50 ~150, p99 ~199, within the histogram's 1/16.
        let p50 = all.pauses.quantileMicroseconds(0.5), p99 = all.pauses.quantileMicroseconds(0.99)
        #expect((140...150).contains(p50), "p50 \(p50)")
        #expect((186...199).contains(p99), "p99 \(p99)")

        let lastTen = all - readings[readings.count - 1]
        #expect(lastTen.epochs == 10_000)
        let line = StatusReport.line(status: .protected, epochs: lastTen, seconds: 10, bytes: 10_000_000, checkpoints: 10_000,
                                     held: (0, .zero, .zero, 0, 0))
        #expect(line.contains("1000 checkpoints/s"), "\(line)")
        #expect(line.contains("pause p50 14") && line.contains("1000 bytes/checkpoint") && line.contains("10 stretched"), "\(line)")
    }

    /// Every bucket's lower bound falls in that bucket, and values map within 1/16.
    @Test func histogramBucketsAreConsistent() {
        for bucket in 0..<PauseHistogram.bucketCount - 1 {
            #expect(PauseHistogram.bucket(microseconds: PauseHistogram.lowerBound(bucket)) == bucket)
        }
        for value in [0, 1, 15, 16, 17, 31, 32, 100, 1000, 12345, 1 << 30] {
            let low = PauseHistogram.lowerBound(PauseHistogram.bucket(microseconds: value))
            #expect(low <= value && Double(value - low) <= Double(value) / 16 + 1, "\(value) -> \(low)")
        }
        var h = PauseHistogram()
        #expect(h.quantileMicroseconds(0.5) == 0)
        h.add(.milliseconds(3))
        #expect(h.quantileMicroseconds(0.99) == 2944, "3 ms falls in the bucket 2944...3071 µs")
        #expect((h - h).count == 0)
    }
}
