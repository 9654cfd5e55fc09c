// The layouts of the policy's state tensors, counters and config vector:
// the positions python/hardmix/layout.py names (tests/test_layout.py reads
// this file and checks every one).
#pragma once

#include <cstdint>

namespace hardmix {
namespace policy {

// Shared with python/hardmix/config.py.
constexpr uint64_t kStreamAdmit = 1;
constexpr uint64_t kStreamReplay = 2;
constexpr double kRebaseExponent = 64.0;
constexpr double kMaxWeightExponent = 600.0;  // replay weights <= e^600: the tree's total stays finite
constexpr double kBalanceDecay = 0.9;

enum Col { kLastLoss, kEma, kSeen, kLastSeen, kCorrect, kForget, kWrong, kQuarantine };
constexpr int kTableCols = 8;
enum SlotField { kIndex, kKey, kLogp, kStep, kClass, kAdmitted, kBestLoss, kTicket };
constexpr int kSlotFields = 8;
enum Link { kLeft, kRight, kParent, kNpl };
constexpr int kLinkFields = 4;
enum HeapClassField { kClassRoot, kClassCount };  // classes [K, 2]: per heap class
constexpr int kHeapClassFields = 2;
enum Counter {
  kT,
  kTRef,
  kNonfinite,
  kAdmittedTotal,
  kEvictedTotal,
  kGraduatedTotal,
  kQuarantinedTotal,
  kWindowCount,
  kWindowHead,
  kFreeTop,
  kErrorCode,   // CUDA only: the first bad input of a skipped step (codes below)
  kErrorAt,     // its position in the batch (or in exclude)
  kErrorValue,  // the value (an int64, or a double's bits)
};
enum ErrorCode { kErrNone, kErrIndex, kErrClass, kErrNegative, kErrNonfinite, kErrExclude };
constexpr int kCounters = 16;
enum Score { kScoreLoss, kScoreMargin, kScoreRank, kScoreForgetting, kScoreGiven };

// The config vector (float64 tensor) in this order; see PolicyConfig.
enum ConfigField {
  kAlpha,
  kLam,
  kGamma,
  kEmaBeta,
  kGraduation,
  kMaxWrong,
  kQuarantineSteps,
  kMaxNew,
  kScore,
  kForgetBoost,
  kQuotas,
  kNumClasses,
  kRaiseNonfinite,
  kShardWorld = 13,  // 0: the whole table here; else the number of shards
  kShardRank,        // this shard: the indices i with i % world == rank
  kNumExamples,      // N (needed when the table is sharded)
  kBalanceReplay,    // 1: class-balanced replay (balance_replay)
  kReweightEvery,    // its class factors are recomputed every this many steps
};
constexpr int kConfigFields = 20;
enum BalanceField { kBalFresh, kBalSeen, kBalFactor };
constexpr int kBalanceFields = 3;

}  // namespace policy
}  // namespace hardmix
