/* The shim protocol, version 1: the C twin of shim/proto.go. docs/SHIM.md
 * is the specification; the three change together. Every integer is
 * little-endian (the host's: the shim runs on x86-64 and arm64 Linux). */
#ifndef SLUICE_SHIM_PROTO_H
#define SLUICE_SHIM_PROTO_H

#include <stdint.h>

#define SHIM_VERSION 1

/* Control messages on the SOCK_SEQPACKET socket: an 8-byte header
 * (magic, type, version), then the body. */
#define MSG_MAGIC 0x48534c53u /* "SLSH" */
#define MSG_HELLO 1           /* client: fds [memfd, kick eventfd] */
#define MSG_REGISTER 2        /* client: fds [the fd to serve] */
#define MSG_UNREGISTER 3      /* client: no fds, no reply */
#define MSG_HELLO_OK 0x81
#define MSG_REGISTERED 0x82

struct msg_hdr {
	uint32_t magic;
	uint16_t type;
	uint16_t version;
};

struct msg_hello { /* 32 bytes */
	struct msg_hdr h;
	uint32_t slots;
	uint32_t slot_data;
	uint64_t size;
	uint32_t pid;
	uint32_t reserved;
};

struct msg_register { /* 16 bytes */
	struct msg_hdr h;
	uint32_t fd;
	uint32_t reserved;
};

struct msg_unregister { /* 16 bytes */
	struct msg_hdr h;
	uint64_t handle;
};

struct msg_hello_ok { /* 16 bytes */
	struct msg_hdr h;
	int32_t err; /* 0, or the errno of a refusal */
	uint32_t channel;
};

struct msg_registered { /* 48 bytes */
	struct msg_hdr h;
	uint32_t reason; /* REASON_NONE: served */
	uint32_t flags;  /* REG_READABLE | REG_WRITABLE | REG_CACHED */
	uint64_t handle;
	uint64_t dev; /* the file's st_dev */
	uint64_t ino;
	uint32_t length_word; /* the file's word in the length table (HELLO_OK's fd), 0: none */
	uint32_t reserved;
};

#define REG_READABLE 1u
#define REG_WRITABLE 2u
#define REG_CACHED 4u /* read-only, buffered, on a mount whose page cache the gateway keeps coherent */

/* Why a call is not served over the channel. */
#define REASON_NONE 0
#define REASON_NOT_SLUICE 1
#define REASON_NOT_REGULAR 2
#define REASON_APPEND 3
#define REASON_PATH 4
#define REASON_MMAP 5
#define REASON_GONE 6
#define REASON_ERROR 7
#define REASON_TOO_MANY 8
#define REASON_STALE 9
#define REASON_FLAGS 10 /* the library's own: a call's flags it does not serve (RWF_NOWAIT, statx fields) */
#define REASON_CACHED 11 /* the library's own: a read of a REG_CACHED fd goes to the page cache */
#define REASON_SIGNAL 12 /* the library's own: a signal handler reentered the library on a thread inside it */
#define NUM_REASONS 13

/* Shared memory: a header page, the slot records (64 bytes each, rounded
 * up to a page), then one data region of slot_data bytes per slot. */
#define SHM_MAGIC 0x52534c53u /* "SLSR" */
#define SHM_PAGE 4096
#define SHM_MAX_SLOTS 256

struct shm_header {
	uint32_t magic;
	uint32_t version;
	uint32_t slots;
	uint32_t slot_data;
	uint64_t size;
	uint32_t idle;     /* gateway: 1 while its poller sleeps on the kick eventfd */
	uint32_t released; /* gateway: 1 once it let go of the channel: a request still submitted never runs */
	uint32_t reserved[8];
	uint64_t submitted[SHM_MAX_SLOTS / 64]; /* at 64: bit i = slot i submitted */
};

struct shm_slot { /* 64 bytes */
	uint32_t state;   /* SLOT_*; the futex word */
	uint32_t waiting; /* client: 1 while its thread sleeps on state */
	uint32_t op;
	uint32_t arg; /* fallocate: mode */
	uint64_t handle;
	int64_t offset;
	int64_t length;
	uint64_t data; /* offset of the data in the shared memory */
	int64_t result; /* >= 0 the answer, < 0 -errno */
	uint32_t status; /* STATUS_DONE or STATUS_FALLBACK */
	uint32_t reason;
};

#define SLOT_FREE 0
#define SLOT_CLAIMED 1
#define SLOT_SUBMITTED 2
#define SLOT_DONE 3

#define STATUS_DONE 0
#define STATUS_FALLBACK 1

#define OP_READ 1
#define OP_WRITE 2
#define OP_FSYNC 3
#define OP_FDATASYNC 4
#define OP_FTRUNCATE 5
#define OP_FALLOCATE 6
#define OP_FSTAT 7

/* OP_WRITE's arg: this write is durable when answered (pwritev2's
 * RWF_DSYNC or RWF_SYNC), as every write of an fd opened O_DSYNC is. */
#define WRITE_FUA 1u

/* fstat's answer in the data region (80 bytes). */
struct shm_stat {
	uint64_t ino;
	int64_t size;
	int64_t blocks;
	uint32_t mode;
	uint32_t nlink;
	uint32_t uid;
	uint32_t gid;
	uint64_t rdev;
	int64_t atime_ns;
	int64_t mtime_ns;
	int64_t ctime_ns;
	uint32_t blksize;
	uint32_t reserved;
};

_Static_assert(sizeof(struct msg_hello) == 32, "hello is 32 bytes");
_Static_assert(sizeof(struct msg_register) == 16, "register is 16 bytes");
_Static_assert(sizeof(struct msg_unregister) == 16, "unregister is 16 bytes");
_Static_assert(sizeof(struct msg_hello_ok) == 16, "hello_ok is 16 bytes");
_Static_assert(sizeof(struct msg_registered) == 48, "registered is 48 bytes");
_Static_assert(sizeof(struct shm_slot) == 64, "a slot record is 64 bytes");
_Static_assert(sizeof(struct shm_stat) == 80, "the stat answer is 80 bytes");
_Static_assert(__builtin_offsetof(struct shm_header, idle) == 24, "idle at 24");
_Static_assert(__builtin_offsetof(struct shm_header, released) == 28, "released at 28");
_Static_assert(__builtin_offsetof(struct shm_header, submitted) == 64, "submitted at 64");

#endif
