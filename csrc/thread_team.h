// A CUDA block emulated by std::threads, so that the CPU tests run the team algorithms
// (metaif/task_solvers.cuh, metaif/task_operators.cuh) the way a block does: members split the work
// by rank, meet at barriers, and reduce through one slot each in a fixed order (team.cuh).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "metaif/team.cuh"

namespace metaif::team {

class Barrier {
 public:
  explicit Barrier(int64_t size) : size_(size) {}

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
    } else {
      released_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int64_t size_, arrived_ = 0, generation_ = 0;
};

struct TeamState {
  Barrier barrier;
  std::vector<double> slots;
  explicit TeamState(int64_t size) : barrier(size), slots(static_cast<size_t>(size)) {}
};

class ThreadTeam : public LoopVectors<ThreadTeam> {
 public:
  ThreadTeam(TeamState* state, int64_t rank, int64_t size) : state_(state), rank_(rank), size_(size) {}

  void sync() const { state_->barrier.arrive_and_wait(); }

  double sum(double partial) const {
    sync();  // the previous sum's readers are done with the slots
    state_->slots[static_cast<size_t>(rank_)] = partial;
    sync();
    double total = 0.0;
    for (const double slot : state_->slots) total += slot;
    return total;
  }

  template <typename F>
  void for_each(int64_t count, F&& f) const {
    for (int64_t i = rank_; i < count; i += size_) f(i);
  }

  template <typename Acc, typename Term, typename Store>
  void rows(int64_t count, int64_t length, Term&& term, Store&& store) const {
    for (int64_t i = rank_; i < count; i += size_) {
      Acc acc = 0;
      for (int64_t j = 0; j < length; ++j) acc += term(i, j);
      store(i, acc);
    }
  }

  bool leader() const { return rank_ == 0; }

 private:
  TeamState* state_;
  int64_t rank_, size_;
};

// Runs body(team) on `size` members (the calling thread is rank 0) and returns rank 0's result.
template <typename Body>
auto run_thread_team(int64_t size, Body&& body) {
  TeamState state(size);
  std::vector<std::thread> members;
  for (int64_t rank = 1; rank < size; ++rank)
    members.emplace_back([&, rank] { body(ThreadTeam(&state, rank, size)); });
  auto result = body(ThreadTeam(&state, 0, size));
  for (auto& member : members) member.join();
  return result;
}

}  // namespace metaif::team
