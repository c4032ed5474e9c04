"""``shaping web``: the trainers' page, served over the status tables.

It reads what the projector wrote (through the operator's read use cases and
:mod:`shaping.services.web.queries`) and writes only through commands (the intervention use
cases the command line calls), so every action a trainer takes on the page is on the log and in
the audit trail, asked for as ``<principal>/<user>``. People log in (:mod:`.users`), roles
decide what each may do (:mod:`.roles`), and every form carries a CSRF token (:mod:`.app`).
"""
