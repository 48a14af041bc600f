"""A realistic school in a few set-based statements.

Learners, settings, analytics, memberships, enrollments, sessions and shared
links are each one `INSERT ... SELECT` over a generated series, so a million
learners take seconds, not the hours a row-by-row insert would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from producer.tokens import issue_token
from shared.models import (
    Course,
    Group,
    GroupCourse,
    GroupLearningPath,
    Learner,
    LearnerStatus,
    LearningPath,
    School,
)


@dataclass(frozen=True)
class SeededSchool:
    school_id: int
    admin_id: int
    token: str

    def as_dict(self) -> dict:
        return asdict(self)


def _series(dialect: str, bind: str) -> str:
    """A table `s(n)` of 1..:bind, as each database writes it."""
    if dialect == "postgresql":
        return f"generate_series(1, :{bind}) AS s(n)"
    return (
        f"(WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < :{bind}) "
        "SELECT n FROM r) AS s"
    )


def _random_hex(dialect: str) -> str:
    if dialect == "postgresql":
        return "md5(random()::text || clock_timestamp()::text) || md5(random()::text)"
    return "lower(hex(randomblob(32)))"


def _in_30_days(dialect: str) -> str:
    if dialect == "postgresql":
        return "CURRENT_TIMESTAMP + interval '30 days'"
    return "datetime('now', '+30 days')"


def _ranked(table: str) -> str:
    """The school's rows of `table` numbered from 0, to spread learners over them."""
    return (
        f"(SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn FROM {table} "
        "WHERE school_id = :school)"
    )


def seed_school(
    session: Session,
    learners: int = 1000,
    groups: int = 5,
    courses: int = 10,
    name: str = "Demo School",
) -> SeededSchool:
    """Create a school with one admin, `learners` learners (about a third not yet
    activated), groups granting courses and learning paths, and some analytics,
    settings, sessions and shared links. Returns the admin's new API token."""
    groups, courses = max(groups, 1), max(courses, 1)
    paths = max(courses // 3, 1)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))

    school_id = session.execute(insert(School).values(name=name).returning(School.id)).scalar_one()
    admin_id = session.execute(
        insert(Learner)
        .values(
            school_id=school_id,
            email=f"admin@school{school_id}.example.com",
            name="School Admin",
            status=LearnerStatus.ACTIVE,
            is_admin=True,
            activated_at=text("CURRENT_TIMESTAMP"),
        )
        .returning(Learner.id)
    ).scalar_one()
    session.execute(
        insert(Group),
        [{"school_id": school_id, "name": f"Group {i}"} for i in range(1, groups + 1)],
    )
    session.execute(
        insert(Course),
        [{"school_id": school_id, "title": f"Course {i}"} for i in range(1, courses + 1)],
    )
    session.execute(
        insert(LearningPath),
        [{"school_id": school_id, "title": f"Path {i}"} for i in range(1, paths + 1)],
    )
    group_ids = session.scalars(select(Group.id).where(Group.school_id == school_id)).all()
    course_ids = session.scalars(select(Course.id).where(Course.school_id == school_id)).all()
    path_ids = session.scalars(
        select(LearningPath.id).where(LearningPath.school_id == school_id)
    ).all()
    # Each group grants two courses and one learning path.
    session.execute(
        insert(GroupCourse),
        [
            {"group_id": g, "course_id": course_ids[(i + k) % len(course_ids)]}
            for i, g in enumerate(group_ids)
            for k in range(min(2, len(course_ids)))
        ],
    )
    session.execute(
        insert(GroupLearningPath),
        [
            {"group_id": g, "learning_path_id": path_ids[i % len(path_ids)]}
            for i, g in enumerate(group_ids)
        ],
    )

    params = {"school": school_id, "n": learners}
    steps = [
        # Three in ten have not activated their account yet. Each has the
        # school's own identifier `sis-<n>` (selections by `external_ids`).
        f"""INSERT INTO learners
                (school_id, email, name, external_id, status, is_admin, activated_at)
            SELECT :school, 'learner' || n || '@school' || :school || '.example.com',
                   'Learner ' || n || ' of school ' || :school, 'sis-' || n,
                   CASE WHEN n % 10 < 3 THEN 'invited' ELSE 'active' END, false,
                   CASE WHEN n % 10 < 3 THEN NULL ELSE CURRENT_TIMESTAMP END
            FROM {_series(dialect, "n")}""",
        """INSERT INTO learner_settings (learner_id, locale, timezone, preferences)
           SELECT id, CASE WHEN id % 3 = 0 THEN 'fr' ELSE 'en' END, 'UTC', '{"digest": true}'
           FROM learners WHERE school_id = :school AND id % 2 = 0""",
        f"""INSERT INTO group_memberships (learner_id, group_id)
            SELECT l.id, g.id FROM learners l JOIN {_ranked("groups")} g ON g.rn = l.id % :groups
            WHERE l.school_id = :school AND l.id % 3 = 0 AND NOT l.is_admin""",
        f"""INSERT INTO course_enrollments (learner_id, course_id)
            SELECT l.id, c.id FROM learners l JOIN {_ranked("courses")} c ON c.rn = l.id % :courses
            WHERE l.school_id = :school AND l.id % 4 = 0 AND NOT l.is_admin""",
        f"""INSERT INTO course_progress (learner_id, course_id, percent_complete)
            SELECT l.id, c.id, l.id % 101 FROM learners l
            JOIN {_ranked("courses")} c ON c.rn = l.id % :courses
            WHERE l.school_id = :school AND l.status = 'active' AND l.id % 4 = 0""",
        f"""INSERT INTO activity_events (learner_id, course_id, kind, detail)
            SELECT l.id, c.id, 'lesson_completed', '{{"lesson": 1}}' FROM learners l
            JOIN {_ranked("courses")} c ON c.rn = l.id % :courses
            WHERE l.school_id = :school AND l.status = 'active' AND l.id % 5 = 0""",
        # Sessions and shared links pick learners by `id % 7`: 7 shares no
        # factor with the status pattern's 10, so whatever the ids' offset they
        # land on active and invited learners alike (not on one status only).
        f"""INSERT INTO sessions (learner_id, token_hash, expires_at)
            SELECT id, {_random_hex(dialect)}, {_in_30_days(dialect)} FROM learners
            WHERE school_id = :school AND status = 'active' AND (id % 7 = 1 OR is_admin)""",
        # Every other linked learner's link comes from the SSO portal.
        f"""INSERT INTO shared_links (school_id, learner_id, course_id, token_hash, via_sso)
            SELECT :school, l.id, c.id, {_random_hex(dialect)}, (l.id / 7) % 2 = 0
            FROM learners l JOIN {_ranked("courses")} c ON c.rn = l.id % :courses
            WHERE l.school_id = :school AND l.id % 7 = 3""",
    ]
    params |= {"groups": len(group_ids), "courses": len(course_ids)}
    for statement in steps:
        session.execute(text(statement), params)

    token = issue_token(session, school_id, admin_id, label="seed")
    return SeededSchool(school_id=school_id, admin_id=admin_id, token=token)
