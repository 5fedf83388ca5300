// The kernels' threads: one persistent pool per process, and a scratch buffer per thread.
//
// Exported besides the entry points of the other files:
//   mbv2_set_threads(n)   the thread count from now on (n > 0), or back to the default (n <= 0)
//   mbv2_thread_count()   the thread count the next call will use
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <sched.h>
#include <unistd.h>

#include "common.h"

namespace mbv2 {
namespace {

// Spawning threads on every call costs more than the work on the 7x7 layers at
// batch 1, so the workers are created once and wait on a condition variable.
// The pool is never destroyed (no join at exit, no destructor-order problems);
// a forked child, which inherits the pool's state but not its threads, builds
// its own. Calls into the pool are serialized: two kernels running at once
// would only oversubscribe the cores.

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : owner_(getpid()) {
    for (int t = 1; t < threads; ++t) {
      try {
        workers_.emplace_back([this] { work(); });
      } catch (...) {
        break;  // thread creation failed: run with the workers we have
      }
    }
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  bool owned_by_this_process() const { return owner_ == getpid(); }

  // Runs body(begin, end) over [0, total) in chunks, on the workers and the calling thread.
  // Returns false if any chunk threw (the exception is not rethrown across threads).
  bool run(int64_t total, int64_t chunk, const std::function<void(int64_t, int64_t)>& body) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      total_ = total;
      chunk_ = chunk;
      next_.store(0);
      pending_ = static_cast<int>(workers_.size());
      failed_ = false;
      ++generation_;
    }
    wake_.notify_all();
    const bool ok = drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    body_ = nullptr;
    return ok && !failed_;
  }

 private:
  bool drain() {
    bool ok = true;
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_);
      if (begin >= total_) break;
      try {
        (*body_)(begin, std::min(total_, begin + chunk_));
      } catch (...) {
        ok = false;
      }
    }
    return ok;
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
      }
      const bool ok = drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (!ok) failed_ = true;
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const pid_t owner_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t total_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  int pending_ = 0;
  bool failed_ = false;
  uint64_t generation_ = 0;
};

std::atomic<int> requested_threads{0};  // 0: not set through mbv2_set_threads
std::mutex pool_mutex;                   // serializes parallel_for calls and pool (re)creation
ThreadPool* pool = nullptr;              // intentionally leaked, see above

int default_thread_count() {
  if (const char* env = std::getenv("MBV2_KERNEL_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

struct KernelFailure {};  // a worker's chunk threw: the entry point returns 1

}  // namespace

// Runs body(begin, end) over [0, total) split into chunks over the pool's threads.
void parallel_for(int64_t total, const std::function<void(int64_t, int64_t)>& body) {
  if (total <= 0) return;
  std::lock_guard<std::mutex> lock(pool_mutex);
  const int wanted = requested_threads.load() > 0 ? requested_threads.load() : default_thread_count();
  if (pool == nullptr || !pool->owned_by_this_process() || pool->size() != wanted) {
    // A pool of another size (or another process's) is abandoned, not joined: its threads,
    // if any exist here, stay parked on their condition variable.
    pool = wanted > 1 ? new ThreadPool(wanted) : nullptr;
  }
  const int workers = pool == nullptr ? 1 : static_cast<int>(std::min<int64_t>(pool->size(), total));
  if (workers <= 1) {
    body(0, total);
    return;
  }
  // Many chunks per thread: the threads end together (at most a small chunk apart) whatever the tasks' sizes and
  // however busy a core is with another process. A call of 32 images takes one at a time: 4 at a time left one
  // thread idle for up to 4 images' time at the end of each call (an eval forward 1.06x img/s with 1, the same
  // CPU time).
  const int64_t chunk = std::max<int64_t>(1, total / (16 * workers));
  if (!pool->run(total, chunk, body)) throw KernelFailure();
}

// The thread count parallel_for will use next.
int64_t threads_now() {
  return requested_threads.load() > 0 ? requested_threads.load() : default_thread_count();
}

// A scratch buffer per thread, kept between calls (the pool's threads live as long as the process).
float* scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

}  // namespace mbv2

// Thread count of the kernels from now on (n > 0), or back to the default (n <= 0):
// $MBV2_KERNEL_THREADS, else the CPUs this process may run on. Called by ms_impl/fast_conv/
// through ctypes (the same loaded library as MindSpore's, so the same pool).
MBV2_EXPORT void mbv2_set_threads(int n) { mbv2::requested_threads.store(n > 0 ? n : 0); }

// The thread count the next call will use.
MBV2_EXPORT int mbv2_thread_count() { return static_cast<int>(mbv2::threads_now()); }
