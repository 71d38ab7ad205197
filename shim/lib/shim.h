/* libsluice-shim internals: the channel to the gateway (channel.c), the
 * requests on it (request.c) and the fd table (fdtable.c), used by the
 * interposed libc entry points (intercept.c). docs/SHIM.md describes the
 * library; proto.h is the wire format. Every symbol not marked EXPORT is
 * hidden (-fvisibility=hidden): the program never sees it. */
#ifndef SLUICE_SHIM_H
#define SLUICE_SHIM_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "proto.h"

#define EXPORT __attribute__((visibility("default")))

/* The interposed entry points that count (SLUICE_SHIM_STATS=1 prints one
 * line for each that did anything). */
enum call {
	CALL_read,
	CALL_read_chk,
	CALL_write,
	CALL_pread,
	CALL_pread64,
	CALL_pread_chk,
	CALL_pread64_chk,
	CALL_pwrite,
	CALL_pwrite64,
	CALL_lseek,
	CALL_lseek64,
	CALL_fsync,
	CALL_fdatasync,
	CALL_ftruncate,
	CALL_ftruncate64,
	CALL_fallocate,
	CALL_fallocate64,
	CALL_posix_fallocate,
	CALL_posix_fallocate64,
	CALL_fstat,
	CALL_fstat64,
	CALL_fxstat,
	CALL_fxstat64,
	CALL_readv,
	CALL_writev,
	CALL_preadv,
	CALL_preadv64,
	CALL_pwritev,
	CALL_pwritev64,
	CALL_preadv2,
	CALL_preadv64v2,
	CALL_pwritev2,
	CALL_pwritev64v2,
	CALL_sync_file_range,
	CALL_statx,
	CALL_fstatat,
	CALL_fstatat64,
	CALL_fxstatat,
	CALL_fxstatat64,
	NUM_CALLS
};

/* A per-fd state. */
enum fd_state {
	FD_UNKNOWN = 0, /* not looked at since it was opened: checked on first IO */
	FD_ON = 1,      /* registered: data calls go over the channel */
	FD_OFF = 2,     /* the kernel serves it; reason says why */
	FD_WITNESS = 3, /* the library's own dup of a registered fd (owner) */
	FD_CHANNEL = 4, /* the library's socket or kick eventfd */
};

struct fdent {
	uint32_t state; /* enum fd_state, atomic */
	uint32_t reason;
	uint64_t handle;
	uint64_t dev, ino;
	uint32_t gen;     /* the channel the handle belongs to */
	int32_t witness;  /* our dup of the fd (kcmp proves fd is still that file), 0: none (ours are >= 3) */
	int32_t owner;    /* FD_WITNESS: the fd it witnesses */
	uint32_t flags;   /* REG_READABLE | REG_WRITABLE | REG_CACHED */
	uint32_t lenw;    /* the file's word in the channel's length table, 0: none */
	/* sync_kernel: the fd was served by a channel that died; its next
	 * fsync/fdatasync goes through the kernel, whose FUSE handle reports
	 * the crash (EIO, once) if the gateway died rather than handed over
	 * (docs/SHIM.md, "The gateway restarted"). Atomic; reset on close. */
	uint32_t sync_kernel;
	struct chan *chan; /* FD_CHANNEL: the channel the fd is of (ctl held) */
};

#define TABLE_MAX 65536 /* fds the table covers; higher ones go to the kernel */

/* A channel. Its struct is never freed (a page per channel the process
 * ever had): a thread that loaded the pointer before the channel died may
 * still look at it. users counts the threads inside it, plus one while it
 * is the current channel; the last one out of a dead channel unmaps it. */
struct chan {
	int sock, kick;
	char *mem;
	size_t size;
	uint32_t slots, slot_data, data_start;
	uint32_t gen;
	uint32_t users, dead, destroyed;
	uint32_t spinners;  /* threads spinning on a slot now (request.c) */
	uint32_t fdusers;   /* threads using sock or kick outside ctl now (chan_fd_use) */
	const uint64_t *lens; /* the gateway's length table, read-only; NULL: none */
	size_t lens_size;
	int64_t avg_ns[3]; /* recent request time per class: read, write, sync */
};

/* The library's state, one per process (channel.c defines it). */
struct shim_state {
	int enabled, stats;
	int cached_reads; /* reads of REG_CACHED fds go to the kernel (SLUICE_SHIM_CACHED_READS, default 1) */
	pid_t pid; /* getpid() is a system call in glibc; kept here, renewed in a fork child */
	int stats_fd; /* a dup of stderr taken at start: programs close theirs (gnulib's close_stdout) */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct fdent *table;
	int hiwater; /* highest fd with an entry + 1 */
	int fd_base; /* where our own fds go: high, out of programs' way */
	pthread_mutex_t ctl;
	struct chan *cur;
	uint32_t gens;
	int64_t failed_at;
	uint64_t neg_dev[16]; /* devices the gateway said are not its mounts */
	int neg_n;
	uint64_t counts[NUM_CALLS][1 + NUM_REASONS]; /* [0] bypassed, [1+r] fell back for r */
};
extern struct shim_state S;

static inline uint32_t state_of(struct fdent *e) { return __atomic_load_n(&e->state, __ATOMIC_ACQUIRE); }
static inline void set_state(struct fdent *e, uint32_t s) { __atomic_store_n(&e->state, s, __ATOMIC_RELEASE); }

/* SHIM_FALLBACK: do the call through the kernel. */
#define SHIM_FALLBACK INT64_MIN

/* shim_fd returns fd's entry, or NULL when the library is inert (no
 * SLUICE_SHIM_SOCKET) or fd is outside the table: pass the call through. */
struct fdent *shim_fd(int fd);

/* SHIM_AT_OFFSET, as shim_io's offset: at the kernel's file offset, which
 * the call then advances (read, write, readv, writev, the v2 calls' -1). */
#define SHIM_AT_OFFSET INT64_MIN

/* Data calls. Each returns >= 0, -errno, or SHIM_FALLBACK (counted). */
int64_t shim_io(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, const struct iovec *iov, int cnt, int64_t off);
int64_t shim_op(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len);
int64_t shim_attr(enum call call, int fd, struct fdent *e, struct shm_stat *a);
int64_t shim_fstat(enum call call, int fd, struct fdent *e, struct stat *st);
int64_t shim_seek_end(enum call call, int fd, struct fdent *e, int64_t off);
/* shim_check answers a call the library serves without a request (why:
 * REASON_NONE; 0) or sends to the kernel for why (SHIM_FALLBACK); either
 * way fd is first looked at, and an fd the library does not serve counts
 * its own reason. */
int64_t shim_check(enum call call, int fd, struct fdent *e, uint32_t why);

/* Table upkeep. */
void shim_opened(int fd);             /* a new fd (open, dup): forget what its number was */
void shim_closing(int fd);            /* before fd is closed or replaced (dup2) */
long shim_close_range(int lo, int hi, unsigned int rawlo, unsigned int rawhi, int flags); /* closes them */
void shim_setfl(int fd, int flags);   /* after fcntl(F_SETFL) */
void shim_mapping(int fd);            /* before mmap of fd */
void shim_kernel_length(int fd);      /* the kernel refreshes fd's length (before it appends or maps) */

/* Raw syscalls (no libc wrapper: those are what we interpose). */
long shim_raw(long nr, long a, long b, long c, long d);
void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int64_t now_ns(void);

/* Shared by channel.c, request.c and fdtable.c. */
int ctl_lock(void);                                   /* take ctl; 0: this thread holds it (a handler reentered) */
void ctl_unlock(void);
void ctl_forget_mine(void);                           /* a fork child's */
void count_call(enum call call, uint32_t reason);     /* a call's outcome: REASON_NONE bypassed */
void fd_touch(int fd);                                /* raise the table's high-water mark */
struct chan *chan_acquire(void);                      /* the current channel, or NULL */
void chan_release(struct chan *c);
void chan_retire(struct chan *c);                     /* c is dead: the next call opens another */
int chan_lose_fd(struct chan *c, int fd);             /* the program closes one of c's fds (ctl held) */
void chan_wait_fds(struct chan *c);                   /* after chan_lose_fd returned 1, ctl released */
int chan_fd_use(struct chan *c, int *fdp);            /* read c->sock or c->kick for a use outside ctl */
void chan_fd_done(struct chan *c);                    /* the use is over */
int chan_gone(struct chan *c);                        /* the gateway closed c's socket */
void fd_unregister(struct fdent *e);                  /* give e's handle back to the gateway */
void fd_drop(struct fdent *e);                        /* forget e's registration, keep its witness (ctl held) */
void fd_forget(struct fdent *e);                      /* forget e altogether: the program closed it (ctl held) */
void fd_off(struct fdent *e, uint32_t reason);        /* the kernel serves e from now on (ctl held) */
struct chan *fd_ready(int fd, struct fdent *e, uint32_t *reason); /* the channel to serve fd on */

#endif
