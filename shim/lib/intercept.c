/* libsluice-shim: the interposed libc entry points. Each looks the fd
 * up; an fd the library does not serve goes straight to the kernel with
 * the raw system call (the library calls no libc function it interposes).
 * Every glibc spelling of a call is its own symbol: the LFS *64 names,
 * _FORTIFY_SOURCE's __*_chk, and the __fxstat family that binaries built
 * before glibc 2.33 call instead of fstat. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <limits.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

extern void __chk_fail(void) __attribute__((noreturn));

/* ret turns a shim answer (>= 0 or -errno) into libc's. */
static long ret(int64_t r) {
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (long)r;
}

/* ---- open: nothing to remember, but a new fd number forgets the old ---- */

static int opened(long fd) {
	if (fd >= 0)
		shim_opened((int)fd);
	return (int)fd;
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode) {
	return opened(shim_raw(SYS_openat, dirfd, (long)path, flags, mode));
}

#define MODE_ARG(flags)                                          \
	mode_t mode = 0;                                         \
	if ((flags) & (O_CREAT | __O_TMPFILE)) {                 \
		va_list ap;                                      \
		va_start(ap, flags);                             \
		mode = va_arg(ap, mode_t);                       \
		va_end(ap);                                      \
	}

EXPORT int open(const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(AT_FDCWD, path, flags, mode);
}

EXPORT int open64(const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, mode);
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(dirfd, path, flags, mode);
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
	MODE_ARG(flags);
	return do_openat(dirfd, path, flags | O_LARGEFILE, mode);
}

/* _FORTIFY_SOURCE's spellings: a mode-less open that needs a mode is a bug. */
static void need_no_mode(int flags) {
	if (flags & (O_CREAT | __O_TMPFILE))
		__chk_fail();
}

EXPORT int __open_2(const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(AT_FDCWD, path, flags, 0);
}

EXPORT int __open64_2(const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, 0);
}

EXPORT int __openat_2(int dirfd, const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(dirfd, path, flags, 0);
}

EXPORT int __openat64_2(int dirfd, const char *path, int flags) {
	need_no_mode(flags);
	return do_openat(dirfd, path, flags | O_LARGEFILE, 0);
}

EXPORT int creat(const char *path, mode_t mode) {
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

EXPORT int creat64(const char *path, mode_t mode) {
	return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_LARGEFILE, mode);
}

/* ---- close and the dup family ---- */

EXPORT int close(int fd) {
	shim_closing(fd);
	return (int)shim_raw(SYS_close, fd, 0, 0, 0);
}

EXPORT int close_range(unsigned int lo, unsigned int hi, int flags) {
	if (flags & CLOSE_RANGE_CLOEXEC)
		return (int)shim_raw(SYS_close_range, lo, hi, flags, 0);
	return (int)shim_close_range((int)(lo > INT32_MAX ? INT32_MAX : lo), (int)(hi > INT32_MAX ? INT32_MAX : hi), lo, hi, flags);
}

EXPORT void closefrom(int lo) {
	if (shim_close_range(lo, INT32_MAX, (unsigned int)lo, ~0U, 0) < 0) {
		for (int fd = lo; fd < 65536; fd++)
			shim_raw(SYS_close, fd, 0, 0, 0);
	}
}

EXPORT int dup(int fd) { return opened(shim_raw(SYS_dup, fd, 0, 0, 0)); }

EXPORT int dup2(int old, int new) {
	if (old != new)
		shim_closing(new);
	if (old == new) /* dup2 checks old and does nothing; dup3 would fail */
		return (int)shim_raw(SYS_fcntl, old, F_GETFD, 0, 0) < 0 ? -1 : new;
	return opened(shim_raw(SYS_dup3, old, new, 0, 0));
}

EXPORT int dup3(int old, int new, int flags) {
	if (old != new)
		shim_closing(new);
	return opened(shim_raw(SYS_dup3, old, new, flags, 0));
}

static int do_fcntl(int fd, int cmd, long arg) {
	long r = shim_raw(SYS_fcntl, fd, cmd, arg, 0);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		opened(r);
	if (r >= 0 && cmd == F_SETFL)
		shim_setfl(fd, (int)arg);
	return (int)r;
}

EXPORT int fcntl(int fd, int cmd, ...) {
	va_list ap;
	va_start(ap, cmd);
	long arg = (long)va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
	va_list ap;
	va_start(ap, cmd);
	long arg = (long)va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

/* ---- data ---- */

/* ONE is a single buffer as a vector of one. */
#define ONE(buf, n) (&(struct iovec){.iov_base = (void *)(buf), .iov_len = (n)})

EXPORT ssize_t read(int fd, void *buf, size_t n) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_io(CALL_read, fd, e, OP_READ, 0, ONE(buf, n), 1, SHIM_AT_OFFSET) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_read, fd, (long)buf, n, 0) : ret(r);
}

EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_io(CALL_read_chk, fd, e, OP_READ, 0, ONE(buf, n), 1, SHIM_AT_OFFSET) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_read, fd, (long)buf, n, 0) : ret(r);
}

EXPORT ssize_t write(int fd, const void *buf, size_t n) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n ? shim_io(CALL_write, fd, e, OP_WRITE, 0, ONE(buf, n), 1, SHIM_AT_OFFSET) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_write, fd, (long)buf, n, 0) : ret(r);
}

/* A negative offset is the kernel's EINVAL. */
static ssize_t do_pread(enum call call, int fd, void *buf, size_t n, off_t off) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n && off >= 0 ? shim_io(call, fd, e, OP_READ, 0, ONE(buf, n), 1, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_pread64, fd, (long)buf, n, off) : ret(r);
}

EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) { return do_pread(CALL_pread, fd, buf, n, off); }
EXPORT ssize_t pread64(int fd, void *buf, size_t n, off64_t off) { return do_pread(CALL_pread64, fd, buf, n, off); }

EXPORT ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	return do_pread(CALL_pread_chk, fd, buf, n, off);
}

EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t n, off64_t off, size_t buflen) {
	if (n > buflen)
		__chk_fail();
	return do_pread(CALL_pread64_chk, fd, buf, n, off);
}

static ssize_t do_pwrite(enum call call, int fd, const void *buf, size_t n, off_t off) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && n && off >= 0 ? shim_io(call, fd, e, OP_WRITE, 0, ONE(buf, n), 1, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_pwrite64, fd, (long)buf, n, off) : ret(r);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(CALL_pwrite, fd, buf, n, off); }
EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { return do_pwrite(CALL_pwrite64, fd, buf, n, off); }

/* ---- vectors: gathered into and scattered from the slots' data ---- */

/* vec_ok says whether the library may serve the vector: a count in
 * 1..IOV_MAX and a total of 1..SSIZE_MAX bytes. The kernel judges the
 * rest (EINVAL, or 0 for nothing to move). */
static int vec_ok(const struct iovec *iov, int cnt) {
	if (cnt <= 0 || cnt > IOV_MAX)
		return 0;
	size_t n = 0;
	for (int i = 0; i < cnt; i++) {
		if (iov[i].iov_len > (size_t)SSIZE_MAX - n)
			return 0;
		n += iov[i].iov_len;
	}
	return n > 0;
}

/* vec: readv/writev (at SHIM_AT_OFFSET) and preadv/pwritev (at off >= 0).
 * On 64-bit Linux the kernel's pos_h is unused: the offset is pos_l. */
static ssize_t vec(enum call call, uint32_t op, int fd, const struct iovec *iov, int cnt, int64_t off) {
	struct fdent *e = shim_fd(fd);
	int64_t r = SHIM_FALLBACK;
	if (e && vec_ok(iov, cnt) && (off >= 0 || off == SHIM_AT_OFFSET))
		r = shim_io(call, fd, e, op, 0, iov, cnt, off);
	if (r != SHIM_FALLBACK)
		return ret(r);
	if (off == SHIM_AT_OFFSET)
		return shim_raw(op == OP_READ ? SYS_readv : SYS_writev, fd, (long)iov, cnt, 0);
	return syscall(op == OP_READ ? SYS_preadv : SYS_pwritev, fd, iov, cnt, off, 0);
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) { return vec(CALL_readv, OP_READ, fd, iov, cnt, SHIM_AT_OFFSET); }
EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) { return vec(CALL_writev, OP_WRITE, fd, iov, cnt, SHIM_AT_OFFSET); }

/* A negative offset is the kernel's EINVAL (-1 included: preadv is not
 * preadv2). */
static ssize_t pvec(enum call call, uint32_t op, int fd, const struct iovec *iov, int cnt, int64_t off) {
	return off < 0 ? syscall(op == OP_READ ? SYS_preadv : SYS_pwritev, fd, iov, cnt, off, 0) : vec(call, op, fd, iov, cnt, off);
}

EXPORT ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off) { return pvec(CALL_preadv, OP_READ, fd, iov, cnt, off); }
EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off64_t off) { return pvec(CALL_preadv64, OP_READ, fd, iov, cnt, off); }
EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) { return pvec(CALL_pwritev, OP_WRITE, fd, iov, cnt, off); }
EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) { return pvec(CALL_pwritev64, OP_WRITE, fd, iov, cnt, off); }

/* The v2 calls' flags (docs/SHIM.md): RWF_HIPRI asks the kernel to poll
 * for completion, a hint the channel has no use for (ignored); RWF_DSYNC
 * and RWF_SYNC make a write durable when answered (WRITE_FUA, as O_DSYNC);
 * RWF_APPEND (reason o_append), RWF_NOWAIT and any other flag (reason
 * flags) go to the kernel, which gives its own answer on the mount. An
 * offset of -1 is the file's offset, which the call advances. */
static ssize_t v2(enum call call, uint32_t op, int fd, const struct iovec *iov, int cnt, int64_t off, int flags) {
	struct fdent *e = shim_fd(fd);
	uint32_t why = REASON_NONE;
	if (flags & RWF_APPEND)
		why = REASON_APPEND;
	else if (flags & ~(RWF_HIPRI | RWF_DSYNC | RWF_SYNC))
		why = REASON_FLAGS;
	int64_t r = SHIM_FALLBACK;
	if (e && vec_ok(iov, cnt) && off >= -1) {
		if (why == REASON_NONE) {
			uint32_t arg = op == OP_WRITE && (flags & (RWF_DSYNC | RWF_SYNC)) ? WRITE_FUA : 0;
			r = shim_io(call, fd, e, op, arg, iov, cnt, off == -1 ? SHIM_AT_OFFSET : off);
		} else {
			shim_check(call, fd, e, why);
			if (why == REASON_APPEND)
				shim_kernel_length(fd);
		}
	}
	if (r != SHIM_FALLBACK)
		return ret(r);
	return syscall(op == OP_READ ? SYS_preadv2 : SYS_pwritev2, fd, iov, cnt, off, 0, flags);
}

EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
	return v2(CALL_preadv2, OP_READ, fd, iov, cnt, off, flags);
}
EXPORT ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
	return v2(CALL_preadv64v2, OP_READ, fd, iov, cnt, off, flags);
}
EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
	return v2(CALL_pwritev2, OP_WRITE, fd, iov, cnt, off, flags);
}
EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
	return v2(CALL_pwritev64v2, OP_WRITE, fd, iov, cnt, off, flags);
}

/* lseek keeps the kernel's offset the truth; only SEEK_END asks the
 * gateway for the length. */
static off_t do_lseek(enum call call, int fd, off_t off, int whence) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e && whence == SEEK_END ? shim_seek_end(call, fd, e, off) : SHIM_FALLBACK;
	return r == SHIM_FALLBACK ? shim_raw(SYS_lseek, fd, off, whence, 0) : ret(r);
}

EXPORT off_t lseek(int fd, off_t off, int whence) { return do_lseek(CALL_lseek, fd, off, whence); }
EXPORT off64_t lseek64(int fd, off64_t off, int whence) { return do_lseek(CALL_lseek64, fd, off, whence); }

/* ---- sync, length, allocation ---- */

static int op(enum call call, int fd, uint32_t o, uint32_t arg, int64_t off, int64_t len, long nr, long a, long b, long c) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e ? shim_op(call, fd, e, o, arg, off, len) : SHIM_FALLBACK;
	return (int)(r == SHIM_FALLBACK ? shim_raw(nr, fd, a, b, c) : ret(r));
}

EXPORT int fsync(int fd) { return op(CALL_fsync, fd, OP_FSYNC, 0, 0, 0, SYS_fsync, 0, 0, 0); }
EXPORT int fdatasync(int fd) { return op(CALL_fdatasync, fd, OP_FDATASYNC, 0, 0, 0, SYS_fdatasync, 0, 0, 0); }

EXPORT int ftruncate(int fd, off_t len) {
	return op(CALL_ftruncate, fd, OP_FTRUNCATE, 0, 0, len, SYS_ftruncate, len, 0, 0);
}

EXPORT int ftruncate64(int fd, off64_t len) {
	return op(CALL_ftruncate64, fd, OP_FTRUNCATE, 0, 0, len, SYS_ftruncate, len, 0, 0);
}

EXPORT int fallocate(int fd, int mode, off_t off, off_t len) {
	return op(CALL_fallocate, fd, OP_FALLOCATE, (uint32_t)mode, off, len, SYS_fallocate, mode, off, len);
}

EXPORT int fallocate64(int fd, int mode, off64_t off, off64_t len) {
	return op(CALL_fallocate64, fd, OP_FALLOCATE, (uint32_t)mode, off, len, SYS_fallocate, mode, off, len);
}

/* posix_fallocate answers an error number, not -1 and errno. */
static int do_posix_fallocate(enum call call, int fd, off_t off, off_t len) {
	if (off < 0 || len <= 0)
		return EINVAL;
	int saved = errno;
	int r = op(call, fd, OP_FALLOCATE, 0, off, len, SYS_fallocate, 0, off, len);
	int e = r < 0 ? errno : 0;
	errno = saved;
	return e;
}

EXPORT int posix_fallocate(int fd, off_t off, off_t len) { return do_posix_fallocate(CALL_posix_fallocate, fd, off, len); }
EXPORT int posix_fallocate64(int fd, off64_t off, off64_t len) { return do_posix_fallocate(CALL_posix_fallocate64, fd, off, len); }

/* sync_file_range: the library's writes are in the gateway when
 * answered, with no kernel page cache to start writeback from. A call
 * that waits for writeback to finish (SYNC_FILE_RANGE_WAIT_AFTER, as
 * PostgreSQL and RocksDB use it with WRITE and WAIT_BEFORE) is a
 * fdatasync of the whole file: durable, more than the kernel promises
 * (it flushes neither metadata nor the device's cache). Any other
 * combination (WRITE alone: "start writeback") is served as done without
 * a request. Bad flags, offsets and lengths are the kernel's EINVAL. */
EXPORT int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
	const unsigned int valid = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
	struct fdent *e = shim_fd(fd);
	int64_t r = SHIM_FALLBACK;
	if (e && !(flags & ~valid) && off >= 0 && n >= 0 && off <= INT64_MAX - n) {
		if (flags & SYNC_FILE_RANGE_WAIT_AFTER)
			r = shim_op(CALL_sync_file_range, fd, e, OP_FDATASYNC, 0, 0, 0);
		else
			r = shim_check(CALL_sync_file_range, fd, e, REASON_NONE);
	}
	return (int)(r == SHIM_FALLBACK ? shim_raw(SYS_sync_file_range, fd, off, n, flags) : ret(r));
}

/* ---- fstat ---- */

static int do_fstat(enum call call, int fd, struct stat *st) {
	struct fdent *e = shim_fd(fd);
	int64_t r = e ? shim_fstat(call, fd, e, st) : SHIM_FALLBACK;
	return (int)(r == SHIM_FALLBACK ? shim_raw(SYS_fstat, fd, (long)st, 0, 0) : ret(r));
}

/* On 64-bit Linux struct stat and struct stat64 are one layout, and the
 * kernel's. */
_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "stat and stat64 share a layout");

EXPORT int fstat(int fd, struct stat *st) { return do_fstat(CALL_fstat, fd, st); }
EXPORT int fstat64(int fd, struct stat64 *st) { return do_fstat(CALL_fstat64, fd, (struct stat *)st); }
EXPORT int __fxstat(int ver, int fd, struct stat *st) {
	(void)ver;
	return do_fstat(CALL_fxstat, fd, st);
}
EXPORT int __fxstat64(int ver, int fd, struct stat64 *st) {
	(void)ver;
	return do_fstat(CALL_fxstat64, fd, (struct stat *)st);
}

/* The *at spellings are fstat when they name the fd itself: an empty
 * path with AT_EMPTY_PATH (glibc's fstat is fstatat(fd, "", st,
 * AT_EMPTY_PATH) inside libc; newfstatat is the system call behind
 * fstatat). Any other path is metadata: the kernel's. */
static int at_fd(int dirfd, const char *path, int flags) {
	return dirfd >= 0 && path && path[0] == 0 && (flags & AT_EMPTY_PATH);
}

static int do_fstatat(enum call call, int dirfd, const char *path, struct stat *st, int flags) {
	struct fdent *e = at_fd(dirfd, path, flags) ? shim_fd(dirfd) : NULL;
	int64_t r = e ? shim_fstat(call, dirfd, e, st) : SHIM_FALLBACK;
	return (int)(r == SHIM_FALLBACK ? shim_raw(SYS_newfstatat, dirfd, (long)path, (long)st, flags) : ret(r));
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags) {
	return do_fstatat(CALL_fstatat, dirfd, path, st, flags);
}
EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags) {
	return do_fstatat(CALL_fstatat64, dirfd, path, (struct stat *)st, flags);
}
EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags) {
	(void)ver;
	return do_fstatat(CALL_fxstatat, dirfd, path, st, flags);
}
EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags) {
	(void)ver;
	return do_fstatat(CALL_fxstatat64, dirfd, path, (struct stat *)st, flags);
}

/* statx on the fd itself is served for the basic fields (STATX_BASIC_STATS;
 * STATX_BTIME is left out of stx_mask, as statx allows for a field the
 * filesystem lacks). A mask asking for more (the mount id, direct IO
 * alignment) goes to the kernel (reason flags). */
static void to_statx(const struct shm_stat *a, uint64_t dev, struct statx *sx) {
	memset(sx, 0, sizeof *sx);
	sx->stx_mask = STATX_BASIC_STATS;
	sx->stx_blksize = a->blksize;
	sx->stx_nlink = a->nlink;
	sx->stx_uid = a->uid;
	sx->stx_gid = a->gid;
	sx->stx_mode = (uint16_t)a->mode;
	sx->stx_ino = a->ino;
	sx->stx_size = (uint64_t)a->size;
	sx->stx_blocks = (uint64_t)a->blocks;
	sx->stx_atime = (struct statx_timestamp){.tv_sec = a->atime_ns / 1000000000LL, .tv_nsec = a->atime_ns % 1000000000LL};
	sx->stx_mtime = (struct statx_timestamp){.tv_sec = a->mtime_ns / 1000000000LL, .tv_nsec = a->mtime_ns % 1000000000LL};
	sx->stx_ctime = (struct statx_timestamp){.tv_sec = a->ctime_ns / 1000000000LL, .tv_nsec = a->ctime_ns % 1000000000LL};
	sx->stx_rdev_major = major(a->rdev);
	sx->stx_rdev_minor = minor(a->rdev);
	sx->stx_dev_major = major(dev);
	sx->stx_dev_minor = minor(dev);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *sx) {
	struct fdent *e = at_fd(dirfd, path, flags) ? shim_fd(dirfd) : NULL;
	int64_t r = SHIM_FALLBACK;
	if (e && (mask & ~(STATX_BASIC_STATS | STATX_BTIME)))
		shim_check(CALL_statx, dirfd, e, REASON_FLAGS);
	else if (e) {
		struct shm_stat a;
		r = shim_attr(CALL_statx, dirfd, e, &a);
		if (r == 0)
			to_statx(&a, e->dev, sx);
	}
	return (int)(r == SHIM_FALLBACK ? syscall(SYS_statx, dirfd, path, flags, mask, sx) : ret(r));
}

/* ---- mmap: the fd's bypass ends (shim_mapping) ---- */

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
	if (fd >= 0 && !(flags & MAP_ANONYMOUS))
		shim_mapping(fd);
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
	return mmap(addr, len, prot, flags, fd, off);
}
