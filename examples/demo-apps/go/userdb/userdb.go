// Package userdb is the demo's mocked user database, identical to the Rust one
// (reprise_demo::users) and the Python and Node clients': every user is derived from its
// generation index alone, so a server and a client compute the same list independently.
//
// The index-th user (0-based) is:
//   - UserId: the first 16 bytes of SHA-256 of "user-{index}", with the RFC 9562 version (8,
//     "custom") and variant bits set, as lowercase 8-4-4-4-12 hex;
//   - Name "User {index}", Email "user{index}@example.com";
//   - Role admin, member, guest by index % 3;
//   - CreatedAt 1700000000 + 60*index (Unix seconds).
//
// The database is sorted by UserId (bytewise, which for these ASCII ids is Go's string
// order): the order the talk's service A streams in, and what makes a stream resumable.
package userdb

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	demov1 "reprise.local/demo/demov1"
)

// Roles, assigned round-robin by generation index.
var Roles = [3]string{"admin", "member", "guest"}

const createdAtBase = 1_700_000_000

// UserID is the id of the index-th generated user.
func UserID(index int) string {
	digest := sha256.Sum256([]byte(fmt.Sprintf("user-%d", index)))
	b := digest[:16]
	b[6] = (b[6] & 0x0f) | 0x80
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// User is the index-th generated user.
func User(index int) *demov1.User {
	return &demov1.User{
		UserId:    UserID(index),
		Name:      fmt.Sprintf("User %d", index),
		Email:     fmt.Sprintf("user%d@example.com", index),
		Role:      Roles[index%3],
		CreatedAt: createdAtBase + 60*int64(index),
	}
}

// Users is the first n users, sorted ascending by UserId.
func Users(n int) []*demov1.User {
	users := make([]*demov1.User, n)
	for i := range users {
		users[i] = User(i)
	}
	sort.Slice(users, func(a, b int) bool { return users[a].UserId < users[b].UserId })
	return users
}

// Start is where a stream over the sorted users begins: the first id strictly after after, or
// with inclusive the first id not below it; 0 when after is empty.
func Start(users []*demov1.User, after string, inclusive bool) int {
	if after == "" {
		return 0
	}
	return sort.Search(len(users), func(i int) bool {
		if inclusive {
			return users[i].UserId >= after
		}
		return users[i].UserId > after
	})
}

// Expected is the ids a strictly-after server sends for a request: role filter ("" = all),
// after, limit (0 = no limit, counting users sent), minus the skipped ids (users the server
// drops: a recovered panic or a record that fails validation).
func Expected(users []*demov1.User, role, after string, limit int, skip map[string]bool) []string {
	var out []string
	for _, u := range users[Start(users, after, false):] {
		if (role != "" && u.Role != role) || skip[u.UserId] {
			continue
		}
		out = append(out, u.UserId)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out
}
