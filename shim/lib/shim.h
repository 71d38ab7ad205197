/* libsluice-shim internals: the channel to the gateway and the fd table
 * (channel.c), used by the interposed libc entry points (intercept.c).
 * docs/SHIM.md describes the library; proto.h is the wire format. */
#ifndef SLUICE_SHIM_H
#define SLUICE_SHIM_H

#define _GNU_SOURCE
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

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
	int32_t witness;  /* FD_ON: our dup of the fd (kcmp proves fd is still that file) */
	int32_t owner;    /* FD_WITNESS: the fd it witnesses */
	uint32_t flags;   /* REG_READABLE | REG_WRITABLE */
};

/* SHIM_FALLBACK: do the call through the kernel. */
#define SHIM_FALLBACK INT64_MIN

/* shim_fd returns fd's entry, or NULL when the library is inert (no
 * SLUICE_SHIM_SOCKET) or fd is outside the table: pass the call through. */
struct fdent *shim_fd(int fd);

/* Data calls. Each returns >= 0, -errno, or SHIM_FALLBACK (counted). */
int64_t shim_pread(enum call call, int fd, struct fdent *e, void *buf, size_t n, int64_t off);
int64_t shim_pwrite(enum call call, int fd, struct fdent *e, const void *buf, size_t n, int64_t off);
int64_t shim_read(enum call call, int fd, struct fdent *e, void *buf, size_t n);
int64_t shim_write(enum call call, int fd, struct fdent *e, const void *buf, size_t n);
int64_t shim_op(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len);
int64_t shim_fstat(enum call call, int fd, struct fdent *e, struct stat *st);
int64_t shim_seek_end(enum call call, int fd, struct fdent *e, int64_t off);

/* Table upkeep. */
void shim_opened(int fd);             /* a new fd (open, dup): forget what its number was */
void shim_closing(int fd);            /* before fd is closed or replaced (dup2) */
void shim_closing_range(int lo, int hi);
void shim_setfl(int fd, int flags);   /* after fcntl(F_SETFL) */
void shim_mapping(int fd);            /* before mmap of fd */

/* Raw syscalls (no libc wrapper: those are what we interpose). */
long shim_raw(long nr, long a, long b, long c, long d);

#endif
